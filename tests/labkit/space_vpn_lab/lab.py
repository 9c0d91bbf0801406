"""The whole lab as one context manager: namespaces, a space-side charon answering
on both tunnel endpoints, an internal-routing app in the space (TCP only, no ICMP, as
in a real Private Space), and an empty customer-side charon for the agent under test.

`close()` always removes everything (charons and the app listener by pid, nft tables,
/etc/netns files, namespaces), also when building fails half way; an atexit hook is
the last safety net.
kernel_ipsec / space_route_based / space_wide_selectors need a kernel with ESP and XFRM
interfaces (kernel_vm). Several routable CIDRs get a customer host each (the .2 of each).
`add_vpn` adds a second VPN connection (another space) to the same two namespaces;
`add_vpns` many (topology.scale_vpn_addresses).
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import secrets
import string
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from space_vpn_lab.app_host import AppHost
from space_vpn_lab.charon_instance import DEFAULT_BINARY, CharonInstance
from space_vpn_lab.space_side import SpaceSide, SpaceTunnel
from space_vpn_lab.topology import (APP_HOST_IPS, APP_NAME, APP_PORT, CUSTOMER_HOST_IP, OTHER_SPACE_CIDR,
                                    OTHER_SPACE_HOST_IP, OTHER_VPN_TUNNEL_IPS, ROUTABLE_CIDR, SECOND_ROUTABLE_CIDR,
                                    SPACE_HOST_IP, TUNNEL_CIDR, Topology, ip, scale_vpn_addresses)
from space_vpn_lab.traffic import PingResult, ping

log = logging.getLogger(__name__)

_PSK_ALPHABET = string.ascii_letters + string.digits + "._"
PSK_LENGTH = 32


def customer_host_in(cidr: str) -> str:
    """The lab's customer LAN host inside a routable CIDR: its .2 (172.16.0.2 in the first)."""
    return str(ipaddress.ip_network(cidr).network_address + 2)


def run_every_step(steps: Iterable[Callable[[], None]], what: str) -> None:
    """A lab's clean-up: each step runs even when an earlier one fails (logged by name)."""
    for step in steps:
        try:
            step()
        except Exception:
            log.exception("%s clean-up step %s failed", what, getattr(step, "__qualname__", step))


def generate_psk(length: int = PSK_LENGTH) -> str:
    """An AWS-format PSK: 8-64 chars of [A-Za-z0-9._], not starting with 0."""
    if not 8 <= length <= 64:
        raise ValueError("AWS PSKs are 8-64 characters")
    first = secrets.choice(_PSK_ALPHABET.replace("0", ""))
    return first + "".join(secrets.choice(_PSK_ALPHABET) for _ in range(length - 1))


class Lab:
    """Use as `with Lab(tmp_path) as lab:`; attributes are valid inside the block."""

    def __init__(self, workdir: str | os.PathLike, prefix: str = "svpn", ike_version: int = 1,
                 psks: Sequence[str] | None = None, charon_binary: str = DEFAULT_BINARY,
                 space_extra_conf: str = "", customer_extra_conf: str = "",
                 kernel_ipsec: bool = False, space_route_based: bool = False,
                 routable_cidrs: Sequence[str] = (ROUTABLE_CIDR,), space_wide_selectors: bool = False) -> None:
        self.workdir = Path(workdir)
        self.ike_version = ike_version
        self.psks: tuple[str, str] = tuple(psks) if psks is not None else (generate_psk(), generate_psk())
        if len(self.psks) != 2:
            raise ValueError("a lab has exactly two tunnels: give two PSKs")
        self.topology = Topology(prefix)
        self.tunnel_ips = self.topology.tunnel_ips
        #: The customer side of the VPN, as the fake Platform API serves it.
        self.routable_cidrs = tuple(routable_cidrs)
        if customer_host_in(self.routable_cidrs[0]) != CUSTOMER_HOST_IP:
            raise ValueError(f"the first routable CIDR must hold the lab's customer host {CUSTOMER_HOST_IP}")
        self.kernel_ipsec = kernel_ipsec
        self.space_charon = CharonInstance("space", self.topology.space_ns, self.workdir,
                                           binary=charon_binary, extra_conf=space_extra_conf,
                                           kernel_ipsec=kernel_ipsec)
        self.customer_charon = CharonInstance("customer", self.topology.cust_ns, self.workdir,
                                              binary=charon_binary, extra_conf=customer_extra_conf,
                                              kernel_ipsec=kernel_ipsec)
        tunnels = [SpaceTunnel(ip, psk) for ip, psk in zip(self.tunnel_ips, self.psks)]
        self.space = SpaceSide(self.space_charon, tunnels, ike_version=ike_version,
                               remote_ts=self.routable_cidrs, route_based=space_route_based,
                               wide_selectors=space_wide_selectors)
        self.app = AppHost(self.topology.space_ns, APP_HOST_IPS, APP_PORT)
        #: Further VPN connections answered by the same space charon (add_vpn).
        self.other_vpns: list[SpaceSide] = []
        self._open = False

    def __repr__(self) -> str:
        # psks deliberately left out: a repr can end up in a test failure report.
        return (f"Lab(prefix={self.topology.prefix!r}, workdir={str(self.workdir)!r}, "
                f"kernel_ipsec={self.kernel_ipsec}, space_route_based={self.space.route_based})")

    def open(self) -> "Lab":
        atexit.register(self.close)
        self._open = True
        began = time.monotonic()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.topology.create()
            for cidr in self.routable_cidrs[1:]:
                self.topology.add_customer_host(customer_host_in(cidr))
            self.app.start()
            self.space_charon.start()
            self.space.load()
            self.customer_charon.start()
        except BaseException:
            log.error("lab %s failed to start; cleaning up", self.topology.prefix)
            self.close()
            raise
        log.info("lab %s up in %.2f s (IKEv%s)", self.topology.prefix,
                 time.monotonic() - began, self.ike_version)
        return self

    def close(self) -> None:
        """Idempotent; each step runs even when an earlier one fails."""
        if not self._open:
            return
        self._open = False
        atexit.unregister(self.close)
        steps = (self.customer_charon.stop, self.space_charon.stop, self.space.destroy,
                 *(side.destroy for side in self.other_vpns), self.app.stop, self.topology.destroy)
        run_every_step(steps, f"lab {self.topology.prefix}")
        log.info("lab %s closed", self.topology.prefix)

    def __enter__(self) -> "Lab":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def recreate_vpn(self, psks: Sequence[str], tunnel_ips: Sequence[str] | None = None) -> None:
        """Heroku destroys the VPN and connects it again: both endpoints say DELETE and
        forget everything, then answer with new PSKs (and maybe new IPs, which must be
        in the documentation range 198.51.100.0/24 the customer routes to the space).
        The new settings are loaded before the DELETEs go out, so nothing re-initiated
        afterwards meets the old ones; old endpoint IPs vanish."""
        old_ips = self.tunnel_ips
        if tunnel_ips is not None:
            for address in tunnel_ips:
                if ipaddress.ip_address(address) not in ipaddress.ip_network(TUNNEL_CIDR):
                    raise ValueError(f"tunnel IP {address} is outside the lab's {TUNNEL_CIDR}")
                ip("-n", self.topology.space_ns, "addr", "replace", f"{address}/32", "dev", "lo")
            self.tunnel_ips = tuple(tunnel_ips)
        self.space.reconfigure(psks=psks, tunnel_ips=tunnel_ips)
        self.psks = tuple(psks)
        for number in (1, 2):
            self.space.graceful_down(number)
        for address in set(old_ips) - set(self.tunnel_ips):
            ip("-n", self.topology.space_ns, "addr", "del", f"{address}/32", "dev", "lo")

    @property
    def every_psk(self) -> tuple[str, ...]:
        """The PSKs of every VPN of the lab: what no output may ever hold."""
        return (*self.psks, *(t.psk for side in self.other_vpns for t in side.tunnels))

    def add_vpn(self, name: str, *, tunnel_ips: Sequence[str] = OTHER_VPN_TUNNEL_IPS,
                space_cidr: str = OTHER_SPACE_CIDR, space_host_ip: str = OTHER_SPACE_HOST_IP,
                routable_cidrs: Sequence[str] = (SECOND_ROUTABLE_CIDR,)) -> SpaceSide:
        """One more VPN connection from the customer gateway, as to a second space: two
        endpoints of its own in TUNNEL_CIDR with fresh PSKs, answered by the same space
        charon as conns NAME-t1/-t2 (responder only, like the first), a host in its
        space CIDR that answers ping, and a customer host in its first routable CIDR
        (the .2). Distinct CIDRs keep its selectors and kernel routes apart from the
        first VPN's (both sides' kernel routes go by destination). Serve it with
        fake_api.serve_space_side. Policy-based space side only."""
        sides = (self.space, *self.other_vpns)
        if self.space.route_based:
            raise ValueError("a second VPN needs a policy-based space side (the XFRM interfaces are the first's)")
        if name in {s.name for s in sides}:
            raise ValueError(f"the lab already has a VPN named {name!r}")
        taken = {t.ip for s in sides for t in s.tunnels}
        for address in tunnel_ips:
            if ipaddress.ip_address(address) not in ipaddress.ip_network(TUNNEL_CIDR) or address in taken:
                raise ValueError(f"tunnel IP {address} is outside the lab's {TUNNEL_CIDR} or taken")
        if ipaddress.ip_address(space_host_ip) not in ipaddress.ip_network(space_cidr):
            raise ValueError(f"space host {space_host_ip} is outside {space_cidr}")
        used = [ipaddress.ip_network(c) for s in sides for c in (s.local_ts, *s.remote_ts)]
        for cidr in (space_cidr, *routable_cidrs):
            if any(ipaddress.ip_network(cidr).overlaps(u) for u in used):
                raise ValueError(f"{cidr} overlaps a CIDR of the lab's other VPNs")
        for address in (*tunnel_ips, space_host_ip):
            ip("-n", self.topology.space_ns, "addr", "replace", f"{address}/32", "dev", "lo")
        ip("-n", self.topology.cust_ns, "addr", "replace", f"{customer_host_in(routable_cidrs[0])}/32", "dev", "lo")
        side = SpaceSide(self.space_charon, [SpaceTunnel(a, generate_psk()) for a in tunnel_ips],
                         ike_version=self.ike_version, local_ts=space_cidr, remote_ts=routable_cidrs, name=name)
        side.load()
        self.other_vpns.append(side)
        return side

    def add_vpns(self, count: int, name: str = "scale") -> list[SpaceSide]:
        """`count` more VPN connections, NAME0, NAME1, ..., each at the addresses of
        topology.scale_vpn_addresses (its own endpoints, space CIDR and host, routable
        CIDR and customer host). Their index in the returned list is their n there."""
        sides = []
        for n in range(count):
            where = scale_vpn_addresses(n)
            sides.append(self.add_vpn(f"{name}{n}", tunnel_ips=where.tunnel_ips, space_cidr=where.space_cidr,
                                      space_host_ip=where.space_host_ip, routable_cidrs=(where.routable_cidr,)))
        return sides

    def name_app(self, address: str = APP_HOST_IPS[0], name: str = APP_NAME) -> None:
        """Resolve `name` to `address` in the customer namespace (its own hosts file):
        before starting what should resolve it; again later to move the name."""
        if address not in APP_HOST_IPS:
            raise ValueError(f"{address} is not one of the app's addresses {APP_HOST_IPS}")
        self.topology.write_hosts({name: address})

    def customer_ping(self, count: int = 5, interval: float = 0.2,
                      deadline: float | None = None, source: str = CUSTOMER_HOST_IP) -> PingResult:
        """Ping the space host from a customer LAN address: crosses the tunnel."""
        return ping(self.topology.cust_ns, source, SPACE_HOST_IP,
                    count=count, interval=interval, deadline=deadline)
