"""ICMP echo for the data-path probe: packets built and parsed (pure), and the raw
sockets that carry them: one unbound receiver (the far end may answer over the other
tunnel's interface) and one send-only socket per probe stream. Used only from the
probe thread, which owns every socket.
"""

from __future__ import annotations

import itertools
import select
import socket
import struct
from dataclasses import dataclass

from agent.adapters import socket_filter
from agent.core.health import ProbeTarget

PAYLOAD = b"space-vpn-agent probe\x00\x00\x00"

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
_ICMP_HEADER = struct.Struct("!BBHHH")
# Not exported by the socket module: linux/icmp.h.
_SOL_RAW = 255
_ICMP_FILTER = 1
_RECV_BUFFER = 65535

Slot = tuple[str, int]


# --- packets (pure) -----------------------------------------------------------------

def checksum(data: bytes) -> int:
    """RFC 1071 internet checksum (ones' complement of the ones' complement sum)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMP echo request (no IP header: the kernel adds it on a raw socket)."""
    header = _ICMP_HEADER.pack(ICMP_ECHO_REQUEST, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    # The kernel fills in the checksum for raw ICMPv6 only, not for IPv4.
    packet = header + payload
    return header[:2] + struct.pack("!H", checksum(packet)) + header[4:] + payload


def parse_echo_reply(ip_packet: bytes) -> tuple[str, int, int] | None:
    """(source address, ident, seq) of an IPv4 ICMP echo reply; None for anything
    else, including truncated packets and bad checksums."""
    if len(ip_packet) < 20 or ip_packet[0] >> 4 != 4:
        return None
    header_len = (ip_packet[0] & 0x0F) * 4
    if header_len < 20 or ip_packet[9] != socket.IPPROTO_ICMP:
        return None
    icmp = ip_packet[header_len:]
    if len(icmp) < _ICMP_HEADER.size:
        return None
    icmp_type, code, _sum, ident, seq = _ICMP_HEADER.unpack_from(icmp)
    if icmp_type != ICMP_ECHO_REPLY or code != 0 or checksum(icmp) != 0:
        return None
    return socket.inet_ntoa(ip_packet[12:16]), ident, seq


def reply_filter(ident: int) -> tuple[socket_filter.Instruction, ...]:
    """Classic BPF on the IPv4 packet: keep ICMP whose identifier is ours (ICMP_FILTER
    has kept echo replies only). Every raw ICMP socket sees every reply: without it the
    probe thread woke for each ping the host answered or sent, 100 a second in a soak."""
    return (
        (0xB1, 0, 0, 0),              # ldxb 4*([0]&0xf)   X = IP header length
        (0x48, 0, 0, 4),              # ldh [x+4]          ICMP identifier
        (0x15, 0, 1, ident & 0xFFFF),  # jeq #ident        -> keep, else drop
        (0x06, 0, 0, 0xFFFF),         # keep
        (0x06, 0, 0, 0),              # drop
    )


# --- sockets ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Echo:
    slot: Slot
    address: str


class IcmpProbes:
    """Echo requests out, replies in. `ident` keeps apart the replies of two agents
    (every raw ICMP socket sees every reply)."""

    def __init__(self, ident: int) -> None:
        self._ident = ident & 0xFFFF
        self._seq = itertools.count()
        self._senders: dict[Slot, socket.socket] = {}
        self._receiver: socket.socket | None = None
        self._waiting: dict[int, _Echo] = {}  # by seq
        self._seq_of: dict[Slot, int] = {}  # the seq each slot waits for (one at a time)

    def want_receiver(self, wanted: bool) -> None:
        """Open the receive socket while ICMP targets exist (raw sockets need
        CAP_NET_RAW: a TCP-only agent opens none)."""
        if not wanted:
            if self._receiver is not None:
                self._receiver.close()
                self._receiver = None
            return
        if self._receiver is not None:
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError:
            # Without it every probe times out, which is the honest result to report.
            return
        try:
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF))
            socket_filter.attach(sock, reply_filter(self._ident))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._receiver = sock

    def start(self, target: ProbeTarget, address: str) -> None:
        """Send one echo request; raises OSError when it cannot be sent."""
        seq = next(self._seq) & 0xFFFF
        try:
            self._sender(target).sendto(echo_request(self._ident, seq), (address, 0))
        except OSError:
            # ENODEV after an interface is re-created: a fresh socket binds to the new one.
            self.forget(target.slot)
            raise
        self.cancel(target.slot)
        self._waiting[seq] = _Echo(target.slot, address)
        self._seq_of[target.slot] = seq

    def cancel(self, slot: Slot) -> None:
        """The probe's time is up: a late reply no longer counts."""
        seq = self._seq_of.pop(slot, None)
        if seq is not None and seq in self._waiting and self._waiting[seq].slot == slot:
            del self._waiting[seq]

    def forget(self, slot: Slot) -> None:
        """The target is gone (or its socket is stale): close its sender."""
        self.cancel(slot)
        sock = self._senders.pop(slot, None)
        if sock is not None:
            sock.close()

    def poll_fds(self) -> dict[int, int]:
        """fd -> poll events to wait for."""
        return {} if self._receiver is None else {self._receiver.fileno(): select.POLLIN}

    def on_ready(self, fd: int) -> list[Slot]:
        """Read every queued reply; the slots whose probe was answered."""
        answered = []
        while self._receiver is not None:
            try:
                packet = self._receiver.recv(_RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                break
            parsed = parse_echo_reply(packet)
            if parsed is None:
                continue
            source, ident, seq = parsed
            echo = self._waiting.get(seq)
            # Ours carry our ident and our seq, and come from the address we probed.
            if ident != self._ident or echo is None or echo.address != source:
                continue
            del self._waiting[seq]
            self._seq_of.pop(echo.slot, None)
            answered.append(echo.slot)
        return answered

    def close(self) -> None:
        for slot in list(self._senders):
            self.forget(slot)
        self.want_receiver(False)
        self._waiting.clear()
        self._seq_of.clear()

    def _sender(self, target: ProbeTarget) -> socket.socket:
        sock = self._senders.get(target.slot)
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            # Send-only: filter every ICMP type so replies do not pile up in its queue.
            sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))
            sock.bind((target.source, 0))
            if target.interface is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, target.interface.encode() + b"\x00")
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._senders[target.slot] = sock
        return sock

