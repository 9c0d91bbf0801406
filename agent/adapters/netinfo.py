"""Local network facts: which of our addresses reaches a tunnel endpoint.

A connected UDP socket asks the kernel's routing table and sends nothing.
"""

from __future__ import annotations

import socket


def source_address_towards(remote_ip: str) -> str | None:
    family = socket.AF_INET6 if ":" in remote_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((remote_ip, 500))
        except OSError:
            return None
        return sock.getsockname()[0]
