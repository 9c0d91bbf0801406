"""Wakes the loop when an IPv4 address comes or goes on this host (rtnetlink's
RTMGRP_IPV4_IFADDR group), or when a static route of the main table is deleted
(RTMGRP_IPV4_ROUTE): an HA pair's virtual address moving is acted on at once, and so is
a route to the space that something else deleted in route mode, not at the next look
(up to 10 s while every connection is steady: core/pace).

Level-triggered: nothing that arrives here is trusted. Only each message's type (and a
deleted route's table and protocol, to leave other routing alone) is read, and all it
does is say "look again"; the pass reads addresses and routes afresh (adapters/links).
One thread, one socket, bounded reads; a burst of changes wakes the loop once per read.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_DELROUTE, RTM_NEWADDR, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE

from agent.adapters.netlink_messages import MAIN_TABLE, PROTO_STATIC, messages

log = logging.getLogger(__name__)

_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_READ = 1 << 16  # bytes per read: whatever else is queued is drained by the next reads
_POLL_S = 0.5  # how soon stop() is noticed


@dataclass(frozen=True)
class AddressesChanged:
    """An IPv4 address was added or removed somewhere on this host, or a static route of
    the main table deleted: look again."""


class AddressWatch:
    def __init__(self, post: Callable[[object], None]) -> None:
        self._post = post
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="address-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        except OSError as e:  # the pass still reads the addresses every tick
            log.warning("cannot watch address changes over netlink (%s); they are seen at the loop's next look "
                        "(within a second, or 10 s while every connection is steady)", e)
            return
        with sock:
            sock.setblocking(False)
            while not self._stop.is_set():
                ready, _, _ = select.select([sock], [], [], _POLL_S)
                if ready and self._drain(sock):
                    self._post(AddressesChanged())

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        got = False
        for _ in range(64):  # bounded: a flood of changes still lets the loop in
            try:
                got = worth_a_look(sock.recv(_READ)) or got
            except BlockingIOError:
                break
            except OSError as e:  # ENOBUFS: we missed some; looking again covers them all
                log.debug("address watch: %s", e)
                return True
        return got


def worth_a_look(datagram: bytes) -> bool:
    """Whether one read from the socket holds an address change or the deletion of a
    static main-table route (what the agent writes). Routes other daemons add and remove
    (BGP, charon's table 220) do not wake the loop. Any bytes: a short or malformed
    message ends the walk."""
    for kind, _sequence, body in messages(datagram):
        if kind in (RTM_NEWADDR, RTM_DELADDR):
            return True
        if kind == RTM_DELROUTE and len(body) >= _RTMSG.size:
            table, protocol = _RTMSG.unpack_from(body)[4:6]
            if table == MAIN_TABLE and protocol == PROTO_STATIC:
                return True
    return False
