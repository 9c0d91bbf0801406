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

from agent.adapters import socket_filter
from agent.core.health import ProbeTarget

Slot = tuple[str, int]
Flow = tuple[str, int, str, int]  # far address, far port, our address, our port

#: connect() results that are an answer from the far side: SYN-ACK (0) or RST.
ANSWERED = (0, errno.ECONNREFUSED)
_LINGER_RESET = struct.pack("ii", 1, 0)  # l_onoff 1, l_linger 0: close sends RST
_TCP_SYN, _TCP_RST, _TCP_ACK = 0x02, 0x04, 0x10
_RECV_BUFFER = 65535
# Classic BPF on the IPv4 packet: keep RST and SYN-ACK segments, drop every other one,
# so the watcher never wakes for the host's ordinary TCP traffic.
_ANSWER_FILTER = (
    (0xB1, 0, 0, 0),              # ldxb 4*([0]&0xf)   X = IP header length
    (0x50, 0, 0, 13),             # ldb [x+13]         TCP flags
    (0x45, 2, 0, _TCP_RST),       # jset #RST          -> keep
    (0x54, 0, 0, _TCP_SYN | _TCP_ACK),  # and #(SYN|ACK)
    (0x15, 0, 1, _TCP_SYN | _TCP_ACK),  # jeq #(SYN|ACK) -> keep, else drop
    (0x06, 0, 0, 0xFFFF),         # keep
    (0x06, 0, 0, 0),              # drop
)


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


def parse_answer(ip_packet: bytes) -> tuple[Flow, str] | None:
    """(flow as we sent it, "SYN-ACK" or "RST") of an IPv4 TCP segment that answers a
    SYN; None for anything else, including truncated packets and fragments."""
    if len(ip_packet) < 20 or ip_packet[0] >> 4 != 4 or ip_packet[9] != socket.IPPROTO_TCP:
        return None
    header_len = (ip_packet[0] & 0x0F) * 4
    fragment = struct.unpack_from("!H", ip_packet, 6)[0] & 0x1FFF
    if header_len < 20 or fragment or len(ip_packet) < header_len + 14:
        return None
    far_port, our_port = struct.unpack_from("!HH", ip_packet, header_len)
    flags = ip_packet[header_len + 13]
    if flags & _TCP_RST:
        kind = "RST"
    elif flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN | _TCP_ACK:
        kind = "SYN-ACK"
    else:
        return None
    far, ours = socket.inet_ntoa(ip_packet[12:16]), socket.inet_ntoa(ip_packet[16:20])
    return (far, far_port, ours, our_port), kind


class TcpProbes:
    """At most one connect in flight per probe stream (slot); every socket is closed
    when its answer, its failure or its deadline comes.

    Route mode binds the socket to the tunnel's interface, so the SYN leaves through it.
    The answer may come back through the other tunnel (AWS picks the tunnel it answers
    on), and a socket bound to one interface never sees what arrives on another: its
    kernel resets that SYN-ACK. So while bound probes exist, an unbound raw socket (the
    watcher, like the ICMP receiver) sees every SYN-ACK and RST and matches its flow."""

    def __init__(self) -> None:
        self._sockets: dict[Slot, socket.socket] = {}
        self._slots: dict[int, Slot] = {}  # by fd
        self._flows: dict[Flow, Slot] = {}  # bound probes in flight, for the watcher
        self._watcher: socket.socket | None = None

    def want_watcher(self, wanted: bool) -> None:
        """Open the watcher while probes are bound to an interface (it needs CAP_NET_RAW;
        without it only answers over the same tunnel count)."""
        if not wanted:
            if self._watcher is not None:
                self._watcher.close()
                self._watcher = None
            return
        if self._watcher is not None:
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except OSError:
            return
        try:
            socket_filter.attach(sock, _ANSWER_FILTER)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._watcher = sock

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
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, target.interface.encode() + b"\x00")
            sock.bind((target.source, 0))
            code = sock.connect_ex((address, target.port))
            local_port = sock.getsockname()[1]
        except OSError as e:
            sock.close()
            return TcpOutcome(target.slot, False, describe(e.errno or 0))
        if code != errno.EINPROGRESS:
            sock.close()
            return TcpOutcome(target.slot, code in ANSWERED, describe(code))
        self._sockets[target.slot] = sock
        self._slots[sock.fileno()] = target.slot
        if target.interface is not None:
            self._flows[(address, target.port, target.source, local_port)] = target.slot
        return None

    def poll_fds(self) -> dict[int, int]:
        """fd -> poll events to wait for: a connect that is writable has its answer or
        failed; the watcher is readable when an answer arrived."""
        fds = dict.fromkeys(self._slots, select.POLLOUT)
        if self._watcher is not None:
            fds[self._watcher.fileno()] = select.POLLIN
        return fds

    def on_ready(self, fd: int) -> list[TcpOutcome]:
        if self._watcher is not None and fd == self._watcher.fileno():
            return self._watch()
        slot = self._slots.get(fd)
        if slot is None:
            return []
        sock = self._sockets[slot]
        try:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            code = e.errno or 0
        self.cancel(slot)
        return [TcpOutcome(slot, code in ANSWERED, describe(code))]

    def _watch(self) -> list[TcpOutcome]:
        """SYN-ACKs and RSTs that match a bound probe in flight, whatever interface
        they came in on; the probe's socket goes (its kernel has reset the SYN-ACK, or
        will: nothing stays half-open on the target)."""
        outcomes = []
        for packet in _drain(self._watcher):
            parsed = parse_answer(packet)
            slot = self._flows.get(parsed[0]) if parsed is not None else None
            if slot is not None:
                self.cancel(slot)
                outcomes.append(TcpOutcome(slot, True, parsed[1]))
        return outcomes

    def cancel(self, slot: Slot) -> None:
        """Drop the connect in flight (answered, deadline, target gone): nothing more is sent."""
        sock = self._sockets.pop(slot, None)
        if sock is not None:
            self._slots.pop(sock.fileno(), None)
            sock.close()
        self._flows = {flow: s for flow, s in self._flows.items() if s != slot}

    forget = cancel  # a TCP probe keeps no socket between probes

    def in_flight(self) -> int:
        return len(self._sockets)

    def close(self) -> None:
        for slot in list(self._sockets):
            self.cancel(slot)
        self.want_watcher(False)


def _drain(sock: socket.socket | None) -> list[bytes]:
    packets = []
    while sock is not None and len(packets) < 1024:  # bounded: the loop must get its turn
        try:
            packets.append(sock.recv(_RECV_BUFFER))
        except (BlockingIOError, InterruptedError):
            break
    return packets
