"""The messages of one rtnetlink datagram (linux/netlink.h), walked the one way the
agent reads them: the route socket's acknowledgements and the address watch's
notifications. Also where the agent's routes live and how they are marked, shared by
the one that writes them and the one that notices them deleted. Pure: bytes in."""

from __future__ import annotations

import struct
from collections.abc import Iterator

NLMSG_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
MAIN_TABLE, PROTO_STATIC = 254, 4  # the agent's routes: table main, protocol static


def messages(datagram: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, body) of each message in turn. Any bytes: a message too short
    for its header or running past the datagram ends the walk."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(datagram):
        length, kind, _flags, sequence, _port = NLMSG_HEADER.unpack_from(datagram, offset)
        if length < NLMSG_HEADER.size or offset + length > len(datagram):
            return
        yield kind, sequence, datagram[offset + NLMSG_HEADER.size:offset + length]
        offset += (length + 3) & ~3  # NLMSG_ALIGN
