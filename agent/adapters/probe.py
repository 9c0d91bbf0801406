"""The data-path probe: from a customer address to the far side's probe target, a TCP
connect when the target has a port (probe_tcp) and an ICMP echo otherwise (probe_icmp),
optionally pinned to one tunnel's interface, one result per probe posted to the loop.
One thread owns every socket and waits on them in one poll loop, so sockets live in the
network namespace of the process that runs the Prober; host names resolve on a thread
of their own (probe_names).
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import math
import os
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from agent.adapters.probe_icmp import IcmpProbes
from agent.adapters.probe_names import NameResolver, host_name_problem
from agent.adapters.probe_tcp import TcpProbes
from agent.core.addresses import PRIVATE_NETWORKS_TEXT, is_private_address
from agent.core.health import ProbeResult, ProbeTarget

log = logging.getLogger(__name__)

#: Seconds; below this a probe stops being a health check and starts being a flood.
MIN_INTERVAL = 0.05
#: Seconds the thread sleeps at most, so it notices stop() even if a wake-up is lost.
MAX_WAIT = 0.5
#: Seconds bounds of a target's resolve_interval (as the config allows).
MIN_RESOLVE_INTERVAL, MAX_RESOLVE_INTERVAL = 1.0, 3600.0

Slot = tuple[str, int]
_prober_numbers = itertools.count()


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def check_target(target: ProbeTarget) -> None:
    """Raise ValueError unless the target is safe and sane to probe. A host name passes
    on its syntax; what it resolves to is checked at every lookup."""
    where = f"probe {target.key} tunnel {target.tunnel}"
    try:
        ipaddress.IPv4Address(target.source)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if _is_ipv4(target.target):
        if not is_private_address(target.target):  # a probe crosses the VPN to a private far side
            raise ValueError(f"{where}: refusing to probe {target.target}, not in {PRIVATE_NETWORKS_TEXT}")
    else:
        problem = host_name_problem(target.target)
        if problem is not None:
            raise ValueError(f"{where}: '{target.target}' is not an IPv4 address or a host name: {problem}")
        if not MIN_RESOLVE_INTERVAL <= target.resolve_interval <= MAX_RESOLVE_INTERVAL:
            raise ValueError(f"{where}: resolve interval {target.resolve_interval} s is outside "
                             f"{MIN_RESOLVE_INTERVAL:g}-{MAX_RESOLVE_INTERVAL:g} s")
    if target.port is not None and (type(target.port) is not int or not 1 <= target.port <= 65535):
        raise ValueError(f"{where}: {target.port!r} is not a port number (1-65535)")
    if target.interval < MIN_INTERVAL:
        raise ValueError(f"{where}: interval {target.interval} s is below {MIN_INTERVAL} s")
    if target.timeout <= 0:
        raise ValueError(f"{where}: timeout must be positive")


def next_probe_at(now: float, interval: float) -> float:
    """When a target probed at `now` is probed next: on a grid of its interval shared by
    every target (multiples of it on the monotonic clock), at least half an interval
    away. Targets of the same interval go out together, one wake-up for all of them and
    their replies in a burst, instead of one wake-up each spread over the second (at 50
    connections the probe thread's cost was mostly wake-ups). A late wake-up never
    catches up on what it missed: it goes on at the next grid point."""
    after = (math.floor(now / interval) + 1) * interval
    return after + interval if after - now < interval / 2 else after


@dataclass(frozen=True)
class _Pending:
    target: ProbeTarget
    address: str
    sent_at: float
    deadline: float
    number: int  # tells this probe's deadline in the schedule from an earlier one's


class Prober:
    """Probes every target once per interval from one thread and posts one
    ProbeResult per probe. set_targets may be called from any thread."""

    def __init__(self, post: Callable[[object], None], *, clock: Callable[[], float] = time.monotonic,
                 getaddrinfo=socket.getaddrinfo) -> None:
        self._post = post
        self._clock = clock
        # Two agents (two namespaces, one kernel view of pids) must not take each
        # other's echo replies: the identifier mixes our pid with a per-process counter.
        self._ident = zlib.crc32(f"{os.getpid()}:{next(_prober_numbers)}".encode()) & 0xFFFF
        self._lock = threading.Lock()
        self._wanted: tuple[ProbeTarget, ...] = ()
        self._applied: tuple[ProbeTarget, ...] | None = None  # the probe thread's last applied _wanted
        self._stop = threading.Event()
        # A socket pair rather than a pipe: a closed socket object never writes to a reused fd.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="probe", daemon=True)
        self._names = NameResolver(self._wake, getaddrinfo=getaddrinfo, clock=clock)
        # Owned by the thread from here on.
        self._targets: dict[Slot, ProbeTarget] = {}
        self._named: set[Slot] = set()  # targets given as a host name (the others are IPv4 literals)
        self._next_due: dict[Slot, float] = {}
        self._pending: dict[Slot, _Pending] = {}  # at most one probe in flight per target
        # Two heaps, so a wake-up touches only what is due or expired, not every target
        # (about a hundred wake-ups a second at 50 connections). Entries go stale when
        # a slot's due time or probe changes; they are dropped when they come up.
        self._due: list[tuple[float, Slot]] = []  # (next_due, slot)
        self._deadlines: list[tuple[float, int, Slot]] = []  # (deadline, _Pending.number, slot)
        self._numbers = itertools.count()
        self._icmp = IcmpProbes(self._ident)
        self._tcp = TcpProbes()
        self._poller = select.poll()
        self._polled: dict[int, int] = {}  # fd -> events registered with _poller

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
        names: dict[str, float] = {}
        for target in targets:
            if not _is_ipv4(target.target):
                names[target.target] = min(names.get(target.target, target.resolve_interval), target.resolve_interval)
        with self._lock:
            self._wanted = tuple(targets)
        self._names.set_names(names)
        self._wake()

    def start(self) -> None:
        self._names.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._names.stop()
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
            self._icmp.close()
            self._tcp.close()

    def _pass(self) -> None:
        self._apply_targets()
        now = self._clock()
        self._follow_names()
        self._expire(now)
        self._send_due(now)
        self._wait_and_receive(self._wait_time(self._clock()))

    def _engine(self, target: ProbeTarget) -> IcmpProbes | TcpProbes:
        return self._icmp if target.port is None else self._tcp

    def _address(self, target: ProbeTarget) -> str | None:
        return self._names.address(target.target) if target.slot in self._named else target.target

    # --- targets ----------------------------------------------------------------------

    def _apply_targets(self) -> None:
        with self._lock:
            if self._wanted is self._applied:
                return  # most wake-ups are replies and due probes: nothing to redo
            self._applied = self._wanted
            wanted = {t.slot: t for t in self._wanted}
        for slot, target in list(self._targets.items()):
            if wanted.get(slot) != target:
                self._engine(target).forget(slot)
                self._pending.pop(slot, None)
                del self._targets[slot]
                self._next_due.pop(slot, None)
                self._named.discard(slot)
        for slot, target in wanted.items():
            if slot not in self._targets:
                self._targets[slot] = target
                self._schedule(slot, self._clock())
                if not _is_ipv4(target.target):
                    self._named.add(slot)
        targets = self._targets.values()
        self._icmp.want_receiver(any(t.port is None for t in targets))
        self._tcp.want_watcher(any(t.port is not None and t.interface is not None for t in targets))

    def _follow_names(self) -> None:
        """A probe on its way to an address its name no longer has counts for nothing;
        the next one goes to the new address."""
        for slot in [s for s in self._named if s in self._pending]:
            pending = self._pending[slot]
            if self._address(pending.target) != pending.address:
                self._engine(pending.target).cancel(slot)
                del self._pending[slot]
                self._schedule(slot, min(self._next_due[slot], self._clock()))

    # --- probing ---------------------------------------------------------------------

    def _schedule(self, slot: Slot, due: float) -> None:
        self._next_due[slot] = due
        heapq.heappush(self._due, (due, slot))

    def _first_due(self) -> float | None:
        """The earliest due time of a target with no probe out (stale entries dropped on
        the way: a busy target is scheduled again when its probe settles)."""
        while self._due:
            due, slot = self._due[0]
            if self._next_due.get(slot) == due and slot not in self._pending:
                return due
            heapq.heappop(self._due)
        return None

    def _first_deadline(self) -> float | None:
        while self._deadlines:
            deadline, number, slot = self._deadlines[0]
            pending = self._pending.get(slot)
            if pending is not None and pending.number == number:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    def _send_due(self, now: float) -> None:
        while (due := self._first_due()) is not None and due <= now:
            _, slot = heapq.heappop(self._due)
            target = self._targets[slot]
            self._schedule(slot, next_probe_at(now, target.interval))
            address = self._address(target)
            if address is None:
                continue  # a name without an address: not the tunnel's fault, no result (probe_names logs it)
            self._send(target, address, now)

    def _send(self, target: ProbeTarget, address: str, now: float) -> None:
        if target.port is None:
            try:
                self._icmp.start(target, address)
            except OSError as e:
                self._fail(target, address, now, f"cannot send: {e}")
                return
        else:
            outcome = self._tcp.start(target, address)
            if outcome is not None:  # decided at once: no route, no interface, or an answer
                self._pending[target.slot] = _Pending(target, address, now, now, next(self._numbers))
                self._settle(target.slot, outcome.ok, outcome.detail, self._clock())
                return
        # A probe never outlives its interval: at most one outstanding per target.
        pending = _Pending(target, address, now, now + min(target.timeout, target.interval), next(self._numbers))
        self._pending[target.slot] = pending
        heapq.heappush(self._deadlines, (pending.deadline, pending.number, target.slot))

    def _fail(self, target: ProbeTarget, address: str, sent_at: float, why: str) -> None:
        log.debug("probe %s tunnel %s: %s %s via %s: %s", target.key, target.tunnel, _kind(target),
                  _dest(target, address), target.interface or "route", why)
        self._post(ProbeResult(target.key, target.tunnel, False, None, sent_at))

    def _settle(self, slot: Slot, ok: bool, detail: str, now: float) -> None:
        pending = self._pending.pop(slot, None)
        if pending is None:
            return  # cancelled meanwhile: a late answer counts for nothing
        if slot in self._next_due:  # free again: back in the schedule
            heapq.heappush(self._due, (self._next_due[slot], slot))
        if not ok:
            self._fail(pending.target, pending.address, pending.sent_at, detail)
            return
        target = pending.target
        self._post(ProbeResult(target.key, target.tunnel, True, max(now - pending.sent_at, 0.0), pending.sent_at))

    def _expire(self, now: float) -> None:
        while (deadline := self._first_deadline()) is not None and deadline <= now:
            _, _, slot = heapq.heappop(self._deadlines)
            pending = self._pending[slot]
            self._engine(pending.target).cancel(slot)
            self._settle(slot, False, f"no answer within {pending.deadline - pending.sent_at:.2f} s", now)

    def _wait_time(self, now: float) -> float:
        # A busy target's due time does not count (_first_due): its probe's deadline wakes
        # us first, and counting it could spin while a slightly late schedule waits on it.
        moments = [m for m in (self._first_due(), self._first_deadline()) if m is not None]
        return max(0.0, min([MAX_WAIT, *(m - now for m in moments)]))

    def _wait_and_receive(self, timeout: float) -> None:
        icmp_fds, tcp_fds = self._icmp.poll_fds(), self._tcp.poll_fds()
        wanted = {self._wake_r.fileno(): select.POLLIN, **icmp_fds, **tcp_fds}
        # One poll object, told only what changed: a wake-up for every reply and every
        # due probe (hundreds a second at 50 connections) no longer rebuilds it.
        for fd in self._polled.keys() - wanted.keys():
            self._poller.unregister(fd)
        for fd, events in wanted.items():
            if self._polled.get(fd) != events:
                self._poller.register(fd, events)  # registers, or modifies a registered fd
        self._polled = wanted
        ready = [fd for fd, _events in self._poller.poll(timeout * 1000)]
        now = self._clock()
        for fd in ready:
            if fd == self._wake_r.fileno():
                self._drain_wake()
            elif fd in icmp_fds:
                for slot in self._icmp.on_ready(fd):
                    self._settle(slot, True, "echo reply", now)
            elif fd in tcp_fds:
                for outcome in self._tcp.on_ready(fd):
                    self._settle(outcome.slot, outcome.ok, outcome.detail, now)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass


def _kind(target: ProbeTarget) -> str:
    return "ICMP echo to" if target.port is None else "TCP connect to"


def _dest(target: ProbeTarget, address: str) -> str:
    where = address if target.port is None else f"{address}:{target.port}"
    return where if address == target.target else f"{target.target} ({where})"
