"""Host-name facts shared by config validation and the Platform API adapter."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str | None) -> bool:
    """localhost or a loopback address (brackets of an IPv6 literal allowed): the only
    hosts plain http may go to, since only local test servers live there."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False
