"""Route writes for the fast reroute: rtnetlink messages encoded by pyroute2 ahead of time
(when the loop arms a plan) and sent on a plain netlink socket when the plan fires.

At that moment only a send and a receive stand between charon's event and the kernel's
new route: no message building and no interface lookup (the loop resolved the index).
That matters because the event thread shares the interpreter with a loop that may be
in the middle of a pass. The routes are the ones LinkManager.set_route writes (table
main, static, replace), so the loop's next look sees exactly the route it planned.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import struct
from dataclasses import dataclass

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_NEWROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from agent.adapters.netlink_messages import MAIN_TABLE, PROTO_STATIC, messages

_ERRNO = struct.Struct("=i")  # nlmsgerr starts with the negative errno (0: acknowledged)
_SCOPE_UNIVERSE, _UNICAST = 0, 1
ACK_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class PreparedRoute:
    """`ip route replace DST dev IFNAME metric METRIC [src SRC]`, ready to send."""

    describe: str
    sequence: int
    message: bytes


class RouteSocket:
    """One rtnetlink socket in the namespace it was created in; not thread-safe (the
    fast reroute uses it under its lock)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(ACK_TIMEOUT_S)
        self._sequence = itertools.count(1)

    def close(self) -> None:
        self._sock.close()

    def prepare(self, dst: str, ifname: str, ifindex: int, metric: int, src: str | None) -> PreparedRoute:
        """Raises ValueError for what is not an IPv4 route (the encoder's own errors say less)."""
        network = ipv4_network(dst)
        msg = rtmsg()
        msg["family"] = socket.AF_INET
        msg["dst_len"] = network.prefixlen
        msg["table"], msg["proto"], msg["scope"], msg["type"] = MAIN_TABLE, PROTO_STATIC, _SCOPE_UNIVERSE, _UNICAST
        msg["attrs"] = [("RTA_TABLE", MAIN_TABLE), ("RTA_DST", str(network.network_address)),
                        ("RTA_PRIORITY", metric), ("RTA_OIF", ifindex)] + ([("RTA_PREFSRC", src)] if src else [])
        sequence = next(self._sequence)
        msg["header"]["type"] = RTM_NEWROUTE
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
        msg["header"]["sequence_number"] = sequence
        msg.encode()
        return PreparedRoute(f"route {dst} dev {ifname} metric {metric}", sequence, bytes(msg.data))

    def send(self, routes: list[PreparedRoute]) -> list[str]:
        """Send all routes in one datagram; returns one error text per refused route."""
        if not routes:
            return []
        waiting = {route.sequence: route for route in routes}
        errors: list[str] = []
        try:
            self._sock.send(b"".join(route.message for route in routes))
            while waiting:
                data = self._sock.recv(65536)
                for sequence, errno_ in _acks(data):
                    route = waiting.pop(sequence, None)  # an ack left over from before is ignored
                    if route is not None and errno_:
                        errors.append(f"{route.describe}: {os.strerror(errno_)}")
        except OSError as e:  # includes the ack timeout
            errors += [f"{route.describe}: {e}" for route in waiting.values()]
        return errors


def ipv4_network(dst: str) -> ipaddress.IPv4Network:
    """`dst` as an IPv4 network, else ValueError naming it: route mode routes IPv4 only."""
    try:
        return ipaddress.IPv4Network(dst, strict=False)
    except ValueError as e:
        raise ValueError(f"route {dst}: not an IPv4 network ({e}); route mode routes IPv4 only") from e


def _acks(data: bytes) -> list[tuple[int, int]]:
    """(sequence, errno) of every NLMSG_ERROR message in one datagram."""
    return [(sequence, -_ERRNO.unpack_from(body)[0]) for kind, sequence, body in messages(data)
            if kind == NLMSG_ERROR and len(body) >= _ERRNO.size]
