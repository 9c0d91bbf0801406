"""Fast reroute (route mode): the route moves the moment charon reports the active
tunnel's CHILD_SA down, on the VICI event thread, by a plan the loop armed after its last
pass.

Why not the loop: a pass takes milliseconds on a gateway but tens of them on a slow VM,
and after a peer's DELETE every one of them is traffic lost. The loop still owns the
state: it arms plans made by the pure route planner (their netlink messages encoded
ahead of time); this only fires one, once, and the next pass re-derives everything (the
failover record included). The loop's own route writes go through `guard`, so a pass
planned before a reroute never undoes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

from agent.adapters.charon import CharonEvent
from agent.adapters.route_socket import PreparedRoute
from agent.core.route_mode import Reroute

log = logging.getLogger(__name__)


class RouteSender(Protocol):
    def prepare(self, dst: str, ifname: str, ifindex: int, metric: int, src: str | None) -> PreparedRoute: ...

    def send(self, routes: list[PreparedRoute]) -> list[str]: ...


@dataclass(frozen=True)
class _Armed:
    plan: Reroute
    routes: list[PreparedRoute]


class FastReroute:
    """Shared by the loop (arm, guard) and the event thread (on_event). `sender` is this
    object's own netlink socket, only ever used under the lock."""

    def __init__(self, sender: RouteSender, clock: Callable[[], float] = time.monotonic) -> None:
        self._sender = sender
        self._clock = clock
        self._lock = threading.Lock()
        self._armed: dict[str, _Armed] = {}
        self._fired = 0

    @property
    def fired(self) -> int:
        """How many reroutes fired so far: a pass notes it before it looks at anything."""
        return self._fired

    def arm(self, plans: Iterable[Reroute], ifindex: Mapping[str, int], since: int) -> list[tuple[Reroute, Exception]]:
        """Replace the armed plans with those of the pass that began at `since` (a pass
        that began before the last reroute planned on older facts and arms nothing).
        A plan towards an interface the kernel does not show is left unarmed; one whose
        messages cannot be encoded too, and comes back with its error."""
        failed: list[tuple[Reroute, Exception]] = []
        with self._lock:
            if self._fired != since:
                return failed
            self._armed = {}
            for plan in plans:
                if all(route.ifname in ifindex for route in plan.routes):
                    try:
                        routes = [self._sender.prepare(r.dst, r.ifname, ifindex[r.ifname], r.metric, r.src)
                                  for r in plan.routes]
                    except Exception as e:  # one connection's routes must not unarm the others
                        failed.append((plan, e))
                        continue
                    self._armed[plan.trigger] = _Armed(plan, routes)
        return failed

    @contextmanager
    def guard(self, since: int) -> Iterator[bool]:
        """Held while the loop writes routes: yields False when a reroute fired since
        `since` (the loop then leaves its writes to the next pass)."""
        with self._lock:
            yield self._fired == since

    def on_event(self, message: object) -> None:
        """Event thread: a CHILD_SA that an armed plan waits for went down: move now."""
        if not isinstance(message, CharonEvent) or message.kind != "child-updown" or message.up:
            return
        started = self._clock()
        with self._lock:
            name = next((name for name in message.names if name in self._armed), None)
            if name is None:
                return
            armed = self._armed[name]
            left = armed.plan.children - set(message.children)
            if message.children and left:  # another child of that tunnel still carries
                self._armed[name] = _Armed(replace(armed.plan, children=frozenset(left)), armed.routes)
                return
            del self._armed[name]
            self._fired += 1
            failed = self._sender.send(armed.routes)
        elapsed_ms = (self._clock() - started) * 1000
        plan = armed.plan
        if failed:  # the next pass plans the routes from scratch anyway
            log.warning("%s: tunnel %d's CHILD_SA went down; fast reroute to tunnel %d failed: %s",
                        plan.label, plan.from_tunnel, plan.to_tunnel, "; ".join(failed))
        else:
            log.info("%s: tunnel %d's CHILD_SA went down: routed via tunnel %d in %.1f ms",
                     plan.label, plan.from_tunnel, plan.to_tunnel, elapsed_ms)
