"""Wakes the loop when an IPv4 address comes or goes on this host (rtnetlink's
RTMGRP_IPV4_IFADDR group): an HA pair's virtual address moving is acted on at once,
not at the next tick.

Level-triggered: nothing that arrives here is parsed or trusted. Each notification only
says "look again"; the pass reads the addresses afresh (adapters/links). One thread, one
socket, bounded reads; a burst of changes wakes the loop once per read.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10  # linux/rtnetlink.h
_READ = 1 << 16  # bytes per read: whatever else is queued is drained by the next reads
_POLL_S = 0.5  # how soon stop() is noticed


@dataclass(frozen=True)
class AddressesChanged:
    """An IPv4 address was added or removed somewhere on this host."""


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
            sock.bind((0, RTMGRP_IPV4_IFADDR))
        except OSError as e:  # the pass still reads the addresses every tick
            log.warning("cannot watch address changes over netlink (%s); they are seen within a second", e)
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
                got = bool(sock.recv(_READ)) or got
            except BlockingIOError:
                break
            except OSError as e:  # ENOBUFS: we missed some; looking again covers them all
                log.debug("address watch: %s", e)
                return True
        return got
