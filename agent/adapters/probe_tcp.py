"""TCP connect for the data-path probe: a non-blocking connect from the customer
source address, waited on in the probe thread's poll loop. Any answer proves the path
(SYN-ACK: something listens; RST: the host is there, the port closed); the socket is
closed at once with SO_LINGER 0, so an RST ends it: no TIME_WAIT on our side, nothing
half-open on the target. Used only from the probe thread, which owns every socket.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from dataclasses import dataclass

from agent.core.health import ProbeTarget

Slot = tuple[str, int]

#: connect() results that are an answer from the far side: SYN-ACK (0) or RST.
ANSWERED = (0, errno.ECONNREFUSED)
_LINGER_RESET = struct.pack("ii", 1, 0)  # l_onoff 1, l_linger 0: close sends RST
_UNBOUND = b""


@dataclass(frozen=True)
class TcpOutcome:
    slot: Slot
    ok: bool
    detail: str  # "SYN-ACK", "RST" or the errno name, for the debug log


def describe(code: int) -> str:
    if code == 0:
        return "SYN-ACK"
    if code == errno.ECONNREFUSED:
        return "RST"
    return errno.errorcode.get(code, f"errno {code}")


class TcpProbes:
    """At most one connect in flight per probe stream (slot); every socket is closed
    when its answer, its failure or its deadline comes."""

    def __init__(self) -> None:
        self._sockets: dict[Slot, socket.socket] = {}
        self._slots: dict[int, Slot] = {}  # by fd

    def start(self, target: ProbeTarget, address: str) -> TcpOutcome | None:
        """Send the SYN. None: in flight (see poll_fds); an outcome when the kernel
        decided at once (no route, no such interface, an immediate answer)."""
        if target.port is None:
            raise ValueError(f"probe {target.key} tunnel {target.tunnel}: a TCP probe needs a port")
        self.cancel(target.slot)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as e:
            return TcpOutcome(target.slot, False, describe(e.errno or 0))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            if target.interface is not None:
                # Route mode: the SYN leaves through this tunnel's interface ...
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, target.interface.encode() + b"\x00")
            sock.bind((target.source, 0))
            code = sock.connect_ex((address, target.port))
        except OSError as e:
            sock.close()
            return TcpOutcome(target.slot, False, describe(e.errno or 0))
        if code != errno.EINPROGRESS:
            sock.close()
            return TcpOutcome(target.slot, code in ANSWERED, describe(code))
        if target.interface is not None:
            _release_device(sock)
        self._sockets[target.slot] = sock
        self._slots[sock.fileno()] = target.slot
        return None

    def poll_fds(self) -> dict[int, int]:
        """fd -> poll events to wait for (writable: the connect has an answer or failed)."""
        return dict.fromkeys(self._slots, select.POLLOUT)

    def on_ready(self, fd: int) -> list[TcpOutcome]:
        slot = self._slots.pop(fd, None)
        if slot is None:
            return []
        sock = self._sockets.pop(slot)
        try:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            code = e.errno or 0
        finally:
            sock.close()
        return [TcpOutcome(slot, code in ANSWERED, describe(code))]

    def cancel(self, slot: Slot) -> None:
        """Drop the connect in flight (deadline, target gone): nothing more is sent."""
        sock = self._sockets.pop(slot, None)
        if sock is not None:
            self._slots.pop(sock.fileno(), None)
            sock.close()

    forget = cancel  # a TCP probe keeps no socket between probes

    def in_flight(self) -> int:
        return len(self._sockets)

    def close(self) -> None:
        for slot in list(self._sockets):
            self.cancel(slot)


def _release_device(sock: socket.socket) -> None:
    """... and the answer may come back through either tunnel (AWS picks the tunnel it
    answers on): a socket still bound to one interface would not see an answer that
    arrives on the other, and its kernel would reset it. The SYN is out by now."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, _UNBOUND)
    except OSError:
        pass  # stays bound (no CAP_NET_RAW): then only an answer over the same tunnel counts
