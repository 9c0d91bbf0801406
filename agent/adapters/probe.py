"""The data-path probe: ICMP echo from a customer address to the far side's probe
target, optionally pinned to one tunnel's interface, one result per probe posted to
the loop. One thread owns every socket, so sockets live in the network namespace of
the process that runs the Prober (a lab runs it under `ip netns exec`).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from agent.core.addresses import PRIVATE_NETWORKS_TEXT, is_private_address
from agent.core.health import ProbeResult, ProbeTarget

log = logging.getLogger(__name__)

#: Seconds; below this a probe stops being a health check and starts being a flood.
MIN_INTERVAL = 0.05
#: Seconds the thread sleeps at most, so it notices stop() even if a wake-up is lost.
MAX_WAIT = 0.5
PAYLOAD = b"space-vpn-agent probe\x00\x00\x00"

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
_ICMP_HEADER = struct.Struct("!BBHHH")
# Not exported by the socket module: linux/icmp.h.
_SOL_RAW = 255
_ICMP_FILTER = 1
_RECV_BUFFER = 65535

_prober_numbers = itertools.count()


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


def check_target(target: ProbeTarget) -> None:
    """Raise ValueError unless the target is safe and sane to probe."""
    try:
        address = ipaddress.IPv4Address(target.target)
        ipaddress.IPv4Address(target.source)
    except ValueError as e:
        raise ValueError(f"probe {target.key} tunnel {target.tunnel}: {e}") from e
    if not is_private_address(str(address)):  # a probe crosses the VPN to a private far side
        raise ValueError(f"probe {target.key} tunnel {target.tunnel}: refusing to probe {address}, "
                         f"not in {PRIVATE_NETWORKS_TEXT}")
    if target.interval < MIN_INTERVAL:
        raise ValueError(f"probe {target.key} tunnel {target.tunnel}: interval {target.interval} s "
                         f"is below {MIN_INTERVAL} s")
    if target.timeout <= 0:
        raise ValueError(f"probe {target.key} tunnel {target.tunnel}: timeout must be positive")


# --- the prober thread ------------------------------------------------------------------

@dataclass(frozen=True)
class _Pending:
    target: ProbeTarget
    sent_at: float
    deadline: float


class Prober:
    """Probes every target once per interval from one thread and posts one
    ProbeResult per probe. set_targets may be called from any thread."""

    def __init__(self, post: Callable[[object], None], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._post = post
        self._clock = clock
        # Two agents (two namespaces, one kernel view of pids) must not take each
        # other's replies: the identifier mixes our pid with a per-process counter.
        self._ident = zlib.crc32(f"{os.getpid()}:{next(_prober_numbers)}".encode()) & 0xFFFF
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wanted: tuple[ProbeTarget, ...] = ()
        self._stop = threading.Event()
        # A socket pair rather than a pipe: a closed socket object never writes to a reused fd.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        # Owned by the thread from here on.
        self._targets: dict[tuple[str, int], ProbeTarget] = {}
        self._next_due: dict[tuple[str, int], float] = {}
        self._senders: dict[tuple[str, int], socket.socket] = {}
        self._receiver: socket.socket | None = None
        self._pending: dict[int, _Pending] = {}

    @property
    def ident(self) -> int:
        return self._ident

    def set_targets(self, targets: list[ProbeTarget]) -> None:
        """Replace the whole set. Raises ValueError (and changes nothing) if any target
        is unsafe or two share a key."""
        for target in targets:
            check_target(target)
        slots = [t.slot for t in targets]
        if len(set(slots)) != len(slots):
            raise ValueError(f"probe targets must be unique per connection and tunnel: {slots}")
        with self._lock:
            self._wanted = tuple(targets)
        self._wake()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        if self._thread.is_alive():
            log.warning("probe thread did not stop within 2 s")
            return
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\x00")
        except OSError:
            pass  # buffer full (a wake-up is already queued) or closed after stop

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._pass()
                except Exception:  # keep probing: the loop relies on a steady stream of results
                    log.exception("probe pass failed; continuing")
                    self._stop.wait(MAX_WAIT)
        finally:
            self._close_all()

    def _pass(self) -> None:
        self._apply_targets()
        self._ensure_receiver()
        now = self._clock()
        self._expire(now)
        self._send_due(now)
        self._wait_and_receive(self._wait_time(self._clock()))

    # --- targets and sockets --------------------------------------------------------

    def _apply_targets(self) -> None:
        with self._lock:
            wanted = {t.slot: t for t in self._wanted}
        for key in list(self._targets):
            if wanted.get(key) != self._targets[key]:
                self._close_sender(key)
                del self._targets[key]
                self._next_due.pop(key, None)
        for key, target in wanted.items():
            if key not in self._targets:
                self._targets[key] = target
                self._next_due[key] = self._clock()

    def _ensure_receiver(self) -> None:
        if self._receiver is not None:
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError as e:
            # Without it every probe times out, which is the honest result to report.
            log.debug("probe: cannot open the ICMP receive socket: %s", e)
            return
        # Unbound on purpose: the far end may answer over the other tunnel's interface.
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF))
        sock.setblocking(False)
        self._receiver = sock

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

    def _close_sender(self, key: tuple[str, int]) -> None:
        sock = self._senders.pop(key, None)
        if sock is not None:
            sock.close()

    def _close_all(self) -> None:
        for key in list(self._senders):
            self._close_sender(key)
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None

    # --- probing ---------------------------------------------------------------------

    def _send_due(self, now: float) -> None:
        busy = {p.target.slot for p in self._pending.values()}
        for key, target in self._targets.items():
            if key in busy or self._next_due[key] > now:
                continue
            # Keep the cadence, but never try to catch up on probes we missed.
            self._next_due[key] = max(self._next_due[key] + target.interval, now)
            self._send(target, now)

    def _send(self, target: ProbeTarget, now: float) -> None:
        seq = next(self._seq) & 0xFFFF
        try:
            self._sender(target).sendto(echo_request(self._ident, seq), (target.target, 0))
        except OSError as e:
            # ENODEV after an interface is re-created: a fresh socket binds to the new one.
            self._close_sender(target.slot)
            log.debug("probe %s tunnel %s: cannot send to %s via %s: %s", target.key, target.tunnel,
                      target.target, target.interface or "route", e)
            self._post(ProbeResult(target.key, target.tunnel, False, None, now))
            return
        # A probe never outlives its interval: at most one outstanding per target.
        self._pending[seq] = _Pending(target, now, now + min(target.timeout, target.interval))

    def _expire(self, now: float) -> None:
        for seq, pending in list(self._pending.items()):
            if pending.deadline <= now:
                del self._pending[seq]
                target = pending.target
                log.debug("probe %s tunnel %s: no reply from %s within %.2f s", target.key,
                          target.tunnel, target.target, pending.deadline - pending.sent_at)
                self._post(ProbeResult(target.key, target.tunnel, False, None, pending.sent_at))

    def _wait_time(self, now: float) -> float:
        # A busy target's due time does not count: its probe's deadline wakes us first,
        # and counting it could spin while a slightly late schedule waits on that probe.
        busy = {p.target.slot for p in self._pending.values()}
        moments = [*(due for key, due in self._next_due.items() if key not in busy),
                   *(p.deadline for p in self._pending.values())]
        return max(0.0, min([MAX_WAIT, *(m - now for m in moments)]))

    def _wait_and_receive(self, timeout: float) -> None:
        poller = select.poll()
        poller.register(self._wake_r.fileno(), select.POLLIN)
        if self._receiver is not None:
            poller.register(self._receiver.fileno(), select.POLLIN)
        ready = {fd for fd, _events in poller.poll(timeout * 1000)}
        if self._wake_r.fileno() in ready:
            self._drain_wake()
        if self._receiver is not None and self._receiver.fileno() in ready:
            self._receive()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _receive(self) -> None:
        while True:
            try:
                packet = self._receiver.recv(_RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            now = self._clock()
            parsed = parse_echo_reply(packet)
            if parsed is None:
                continue
            source, ident, seq = parsed
            pending = self._pending.get(seq)
            # Every raw ICMP socket sees every reply: ours carry our ident, our seq and
            # come from the address we probed.
            if ident != self._ident or pending is None or pending.target.target != source:
                continue
            del self._pending[seq]
            target = pending.target
            self._post(ProbeResult(target.key, target.tunnel, True, max(now - pending.sent_at, 0.0),
                                   pending.sent_at))
