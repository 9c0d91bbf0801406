"""Route mode's kernel side over netlink (pyroute2): XFRM interfaces, the routes to
the space through them, and the probe for kernel support.

pyroute2 speaks rtnetlink directly, so nothing here parses `ip` output. Library errors
become LinkError with the interface or route named.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.adapters.route_socket import ipv4_network
from agent.core.netstate import INTERFACE_PREFIX, Link, NetState, Route

log = logging.getLogger(__name__)

_PROBE_NAME = "svprobe0"
_PROBE_IF_ID = 0x3FFFFFFF  # outside interface_id()'s range: never one of ours


class LinkError(Exception):
    """A netlink request about our interfaces or routes failed."""


def xfrm_interface_support() -> str | None:
    """None when this kernel can create XFRM interfaces (route mode), else the reason.

    Creating (and deleting) a throw-away interface is the only reliable test: the
    module may be built in, loadable on demand, or absent."""
    try:
        with IPRoute() as ipr:
            for index in ipr.link_lookup(ifname=_PROBE_NAME):
                ipr.link("del", index=index)
            ipr.link("add", ifname=_PROBE_NAME, kind="xfrm", xfrm_if_id=_PROBE_IF_ID)
            for index in ipr.link_lookup(ifname=_PROBE_NAME):
                ipr.link("del", index=index)
    except NetlinkError as e:
        if e.code == errno.EPERM:
            return "no permission to create network interfaces (needs CAP_NET_ADMIN)"
        return f"the kernel cannot create XFRM interfaces ({e.args[-1] if e.args else e}; needs CONFIG_XFRM_INTERFACE)"
    except OSError as e:
        return f"netlink unavailable: {e}"
    return None


def _attr(message, name: str, default=None):
    value = message.get_attr(name)
    return default if value is None else value


class LinkManager:
    """One netlink socket, used by the loop thread only."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def observe(self) -> NetState:
        try:
            links = self._links()
            by_index = {link.index: link.name for link in links.values()}
            # Only routes through our own interfaces are kept: without any (policy mode) the
            # dump is skipped, which a libipsec gateway's table of policy routes made the
            # dearest part of an idle pass.
            routes = tuple(self._routes(by_index)) if by_index else ()
            addresses = tuple(
                _attr(a, "IFA_ADDRESS") for a in self._ipr.get_addr(family=socket.AF_INET)
            )
        except NetlinkError as e:
            raise LinkError(f"reading interfaces and routes: {e}") from e
        return NetState(links=links, routes=routes, addresses=addresses)

    def _links(self) -> dict[str, Link]:
        links = {}
        for message in self._ipr.get_links():
            name = _attr(message, "IFLA_IFNAME", "")
            info = message.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            if kind != "xfrm" or not name.startswith(INTERFACE_PREFIX):
                continue  # only our own interfaces are of interest
            data = info.get_attr("IFLA_INFO_DATA")
            if_id = data.get_attr("IFLA_XFRM_IF_ID") if data else None
            links[name] = Link(
                name=name,
                index=message["index"],
                kind=kind,
                if_id=if_id,
                mtu=_attr(message, "IFLA_MTU", 0),
                up=bool(message["flags"] & 1),  # IFF_UP
            )
        return links

    def _routes(self, by_index: dict[int, str]):
        for message in self._ipr.get_routes(family=socket.AF_INET, table=254):
            ifname = by_index.get(message.get_attr("RTA_OIF"))
            dst = message.get_attr("RTA_DST")
            if ifname is None or dst is None:
                continue
            network = ipaddress.ip_network(f"{dst}/{message['dst_len']}", strict=False)
            yield Route(str(network), ifname, _attr(message, "RTA_PRIORITY", 0), message.get_attr("RTA_PREFSRC"))

    def ensure_interface(self, name: str, if_id: int, mtu: int) -> None:
        try:
            found = self._ipr.link_lookup(ifname=name)
            if found and self._if_id(found[0]) != if_id:
                self._ipr.link("del", index=found[0])  # same name, other if_id: not usable
                found = []
            if not found:
                self._ipr.link("add", ifname=name, kind="xfrm", xfrm_if_id=if_id)
                found = self._ipr.link_lookup(ifname=name)
            self._ipr.link("set", index=found[0], mtu=mtu, state="up")
        except NetlinkError as e:
            raise LinkError(f"interface {name} (if_id {if_id}): {e}") from e

    def _if_id(self, index: int) -> int | None:
        info = self._ipr.get_links(index)[0].get_attr("IFLA_LINKINFO")
        data = info.get_attr("IFLA_INFO_DATA") if info else None
        return data.get_attr("IFLA_XFRM_IF_ID") if data else None

    def remove_interface(self, name: str) -> None:
        try:
            for index in self._ipr.link_lookup(ifname=name):
                self._ipr.link("del", index=index)
        except NetlinkError as e:
            raise LinkError(f"removing interface {name}: {e}") from e

    def set_route(self, dst: str, ifname: str, metric: int, src: str | None) -> None:
        """Replace the route of that destination and metric: an atomic move, no gap.
        ValueError for what is not an IPv4 network (pyroute2 would guess another family)."""
        ipv4_network(dst)
        try:
            index = self._ipr.link_lookup(ifname=ifname)[0]
            spec = {"dst": dst, "oif": index, "priority": metric, "table": 254}
            if src:
                spec["prefsrc"] = src
            self._ipr.route("replace", **spec)
        except (NetlinkError, IndexError) as e:
            raise LinkError(f"route {dst} dev {ifname} metric {metric}: {e}") from e

    def delete_route(self, dst: str, ifname: str, metric: int) -> None:
        try:
            index = self._ipr.link_lookup(ifname=ifname)[0]
            self._ipr.route("del", dst=dst, oif=index, priority=metric, table=254)
        except NetlinkError as e:
            if e.code != errno.ESRCH:  # already gone is fine
                raise LinkError(f"deleting route {dst} dev {ifname} metric {metric}: {e}") from e
        except IndexError:
            pass  # the interface is gone and its routes with it
