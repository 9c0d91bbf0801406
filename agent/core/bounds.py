"""The bounds a far end's description must keep, from AWS's own rules for a Site-to-Site
VPN: which addresses a tunnel endpoint may have, what a pre-shared key may hold, which
CIDR blocks may be tunnelled, how long names and messages may be. One home, so the API
answer, the cache, static connections and the config cannot disagree.

Pure: each rule returns a problem as text without the key path (the caller names the
field), or None. No message quotes a pre-shared key: only its length.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from agent.core.addresses import PRIVATE_NETWORKS, PRIVATE_NETWORKS_TEXT

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: RFC 5737: documentation ranges. Not routable on the Internet, yet allowed as tunnel
#: endpoints: the lab (and the examples) use them for the far end's public IPs.
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
#: AWS: 8-64 characters of letters, digits, '.' and '_'; it cannot start with 0.
PSK_LENGTH = (8, 64)
_PSK_CHARACTERS = re.compile(r"[A-Za-z0-9._]*")
#: Connection ids and names at Heroku are short; more is junk or an attack, and a name
#: ends up in file names and charon object names.
MAX_NAME = 128
#: A tunnel's status name (UP, DOWN) or a timestamp: short tokens.
MAX_TOKEN = 64
_RESERVED = ipaddress.ip_network("240.0.0.0/4")  # "future use", 255.255.255.255 included


def tunnel_ip_problem(address: IPAddress) -> str | None:
    """A tunnel endpoint is a public unicast IPv4 address (documentation ranges allowed)."""
    if address.version != 4:
        return f"{address} is not an IPv4 address (AWS tunnel endpoints are IPv4)"
    if any(address in net for net in DOCUMENTATION_NETWORKS):
        return None
    kind = _special_kind(address)
    if kind is not None:
        return f"{address} is {kind}, not a tunnel endpoint's public address"
    return None


def _special_kind(address: ipaddress.IPv4Address) -> str | None:
    if address.is_unspecified:
        return "the unspecified address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address in _RESERVED:
        return "a reserved address (240.0.0.0/4)"
    if any(address in net for net in PRIVATE_NETWORKS):
        return "a private (RFC 1918) address"
    return None


def psk_problem(key: str) -> str | None:
    """AWS's rule for a pre-shared key. The message says what is wrong, never the key."""
    low, high = PSK_LENGTH
    if not low <= len(key) <= high:
        return f"must be {low} to {high} characters (AWS's rule), got {len(key)}"
    if not _PSK_CHARACTERS.fullmatch(key):
        return "may hold only letters, digits, '.' and '_' (AWS's rule)"
    if key.startswith("0"):
        return "must not start with 0 (AWS's rule)"
    return None


def tunnelled_cidr_problem(network: IPNetwork) -> str | None:
    """A space or customer CIDR is IPv4 inside RFC 1918: the only networks a Private
    Space VPN routes, and never a slice of the Internet (0.0.0.0/1 would pull half of
    it into the tunnel)."""
    if network.version != 4:
        return f"{network} is not an IPv4 network (a Private Space VPN routes IPv4 only)"
    if not any(network.subnet_of(private) for private in PRIVATE_NETWORKS):
        return f"{network} is not inside RFC 1918 ({PRIVATE_NETWORKS_TEXT})"
    return None


def overlap_problems(space: IPNetwork | None,
                     routable: Sequence[tuple[str, IPNetwork]]) -> list[tuple[str, str]]:
    """(path, problem) for each routable CIDR (given with its path) that overlaps the
    space CIDR or an earlier routable CIDR: selectors and routes must not be ambiguous."""
    problems = []
    for index, (path, network) in enumerate(routable):
        if space is not None and network.overlaps(space):
            problems.append((path, f"{network} overlaps space_cidr_block {space}"))
        for earlier_path, earlier in routable[:index]:
            if network.overlaps(earlier):
                problems.append((path, f"{network} overlaps {earlier_path.rpartition('.')[2]} {earlier}"))
    return problems


def networks_holding(address: IPAddress, networks: Iterable[tuple[str, IPNetwork]]) -> list[str]:
    """The paths of the networks that hold `address` (a tunnel endpoint, our own
    address, the API's): tunnelling it would cut the path the tunnel itself needs."""
    return [path for path, network in networks if network.version == address.version and address in network]


def text_problem(text: str, limit: int) -> str | None:
    """A name or token from outside: at most `limit` characters, no control characters
    (they would reach logs, sd_notify and terminals)."""
    if len(text) > limit:
        return f"{len(text)} characters, more than the {limit} allowed"
    if not text.isprintable():
        return "holds control characters"
    return None


def swallowed_addresses(space_cidr_block: str, routable_cidrs: Sequence[str], *,
                        local_address: str | None, api_address: str | None) -> list[str]:
    """What a far end's CIDRs would pull into the tunnel that must stay outside it, one
    problem each: our own address inside space_cidr_block (it may well sit in our own
    LAN, a gateway behind NAT, but never in the far end's network), the Platform API's
    address (when api.url names one) inside any of them: the agent would cut itself off
    from the answer that could fix it. None: unknown. Unparsable text is left to the
    validation that owns it."""
    space = [("space_cidr_block", space_cidr_block)]
    every = space + [(f"routable_cidrs[{i}]", cidr) for i, cidr in enumerate(routable_cidrs)]
    problems = []
    for name, text, networks in (("local_address", local_address, space), ("the API host", api_address, every)):
        address = _address_or_none(text)
        for path, cidr in networks:
            network = _network_or_none(cidr)
            if address is not None and network is not None and network.version == address.version \
                    and address in network:
                problems.append(f"{path} {network} holds {name} {address}")
    return problems


# Every pass asks again for the same few strings: parsing them each time was a tenth of
# an idle pass at 50 connections. Bounded: a far end's texts are themselves bounded.
@functools.lru_cache(maxsize=1024)
def _address_or_none(text: str | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text) if text else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _network_or_none(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
