"""Route mode's kernel objects as data: XFRM interfaces and routes, their names and
if_ids, and what the links adapter observed of them.

Names and if_ids derive from the configured connection alone (not from the API), so a
restarted agent finds its interfaces even before the Platform API answers.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass, field
from functools import cached_property

#: Every XFRM interface the agent creates starts with this.
INTERFACE_PREFIX = "sv"
ACTIVE_METRIC = 100  # route via the tunnel that carries traffic
STANDBY_METRIC = 200  # route via the other tunnel, while its CHILD_SA is installed
_IFNAMSIZ = 15  # usable characters of a Linux interface name
_NAME_CHARS = re.compile(r"[^a-z0-9]")


def interface_name(key: str, vpn: str, number: int) -> str:
    """e.g. "svoffice3fa2-1": readable (the VPN's name) and unique (a hash of the key)."""
    stem = _NAME_CHARS.sub("", vpn.lower())[:7]
    digest = f"{zlib.crc32(key.encode()) & 0xFFFF:04x}"
    name = f"{INTERFACE_PREFIX}{stem}{digest}-{number}"
    assert len(name) <= _IFNAMSIZ
    return name


def interface_id(key: str, number: int) -> int:
    """The XFRM if_id of a tunnel: never 0, stable across restarts, distinct per tunnel."""
    return ((zlib.crc32(key.encode()) & 0x0FFFFFFF) << 2) | number


@dataclass(frozen=True)
class Link:
    name: str
    index: int
    kind: str  # "xfrm" for ours
    if_id: int | None
    mtu: int
    up: bool


@dataclass(frozen=True)
class Route:
    dst: str  # a network, e.g. "10.0.0.0/16"
    ifname: str
    metric: int
    src: str | None = None


@dataclass(frozen=True)
class NetState:
    """One observation of the kernel (in the agent's network namespace)."""

    links: dict[str, Link] = field(default_factory=dict)  # by name
    routes: tuple[Route, ...] = ()  # main table, only those via our interfaces
    addresses: tuple[str, ...] = ()  # local IPv4 addresses

    def routes_to(self, dst: str) -> tuple[Route, ...]:
        return self._routes_by_dst.get(dst, ())

    @cached_property
    def _routes_by_dst(self) -> dict[str, tuple[Route, ...]]:
        """Every connection asks for its own destinations: one look at all routes per
        observation, not one per connection (that made a pass over N connections N x N)."""
        found: dict[str, list[Route]] = {}
        for route in self.routes:
            found.setdefault(route.dst, []).append(route)
        return {dst: tuple(routes) for dst, routes in found.items()}


def source_inside(cidrs: tuple[str, ...], addresses: tuple[str, ...]) -> str | None:
    """The first local address inside the routable CIDRs: packets the gateway itself
    sends into the tunnel must carry such a source to match the traffic selectors."""
    networks = [ipaddress.ip_network(c) for c in cidrs]
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if any(ip in net for net in networks):
            return address
    return None
