"""ARP frames for the split-brain guard: the RFC 5227 probe it sends and the replies it
reads. Pure: bytes in, facts out, nothing trusted that does not fit.

A probe asks "who has A?" with sender address 0.0.0.0, so no host updates its ARP cache
from it (unlike a gratuitous ARP) and every host holding A answers with its MAC.
"""

from __future__ import annotations

import ipaddress
import struct

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
_ETHER = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype, ptype, hlen, plen, op, sha, spa, tha, tpa
_REQUEST, _REPLY = 1, 2
_BROADCAST = b"\xff" * 6
FRAME_LEN = _ETHER.size + _ARP.size  # 42 bytes; shorter frames are not ARP for IPv4
IP_HEADER_MIN = 20
VRRP_PROTO = 112


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes; ValueError for anything else."""
    raw = bytes.fromhex(text.replace(":", ""))
    if len(raw) != 6 or text.count(":") != 5:
        raise ValueError(f"'{text}' is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return raw


def probe_frame(own_mac: str, address: str) -> bytes:
    """An Ethernet broadcast ARP request for address, sender 0.0.0.0 (RFC 5227)."""
    mac = mac_bytes(own_mac)
    target = ipaddress.IPv4Address(address).packed
    return _ETHER.pack(_BROADCAST, mac, ETH_P_ARP) + _ARP.pack(
        1, ETH_P_IP, 6, 4, _REQUEST, mac, b"\0" * 4, b"\0" * 6, target)


def replier(frame: bytes, address: str, own_mac: str) -> str | None:
    """The MAC of another host claiming address in this frame (a reply, or a request or
    gratuitous ARP sent from it), else None."""
    if len(frame) < FRAME_LEN:
        return None
    _, _, ethertype = _ETHER.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _, _ = _ARP.unpack_from(frame, _ETHER.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or op not in (_REQUEST, _REPLY):
        return None
    if spa != ipaddress.IPv4Address(address).packed:
        return None
    sender = mac_text(sha)
    if sender == own_mac.lower() or sha in (b"\0" * 6, _BROADCAST):
        return None
    return sender


def vrrp_source(packet: bytes) -> str | None:
    """The IPv4 source of a VRRP packet as a raw IP socket hands it over, else None."""
    if len(packet) < IP_HEADER_MIN or packet[0] >> 4 != 4 or packet[9] != VRRP_PROTO:
        return None
    header_len = (packet[0] & 0x0F) * 4
    if header_len < IP_HEADER_MIN or len(packet) <= header_len:
        return None
    return str(ipaddress.IPv4Address(packet[12:16]))
