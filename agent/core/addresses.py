"""Address facts every layer shares: which networks are private (RFC 1918) and which
hosts are loopback. One home, so config, the API payload, the doctor and the probes
cannot disagree about them.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

#: RFC 1918: the only networks a Private Space VPN routes, and the only probe targets.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
PRIVATE_NETWORKS_TEXT = "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16"


def is_private_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """An IPv4 network inside RFC 1918."""
    return network.version == 4 and any(network.subnet_of(private) for private in PRIVATE_NETWORKS)


def is_private_address(address: str) -> bool:
    """An IPv4 address inside RFC 1918 (False for anything that is not an address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == 4 and any(ip in net for net in PRIVATE_NETWORKS)


def is_loopback_host(host: str | None) -> bool:
    """localhost or a loopback address (brackets of an IPv6 literal allowed): the only
    hosts plain http may go to, since only local test servers live there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def url_address(url: str) -> str | None:
    """The IP address a URL names as its host (None for a host name or no URL)."""
    try:
        host = urlsplit(url).hostname
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None
