"""Maintenance scenarios of the failover benchmark: a Timeline clocks one run from its first
ping, and each driver (silent, graceful, telemetry, drain) acts on the space side or the
system under test at fixed offsets, marking when the maintenance ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from space_vpn_lab.lab import Lab
from space_vpn_lab.space_side import SpaceSideError

log = logging.getLogger(__name__)

LEAD_S = 2.0  # traffic before the first action, so the loss is never a start-up artefact
ROUTE_SCENARIOS = ("a", "b", "c", "d")


class Timeline:
    """Clock of one run: actions at fixed offsets from the first ping, logged as events."""

    def __init__(self, lab: Lab, system: Any, active: int) -> None:
        self.lab, self.system, self.active = lab, system, active
        self.t0 = time.monotonic()
        self.t0_unix = time.time()  # to find the run's lines in the logs
        self.events: list[dict[str, Any]] = []
        self.restore_at: float | None = None

    def at(self, offset_s: float) -> None:
        time.sleep(max(0.0, self.t0 + offset_s - time.monotonic()))

    def mark(self, event: str) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.t0, 3), "event": event})
        log.info("bench: %s", event)

    def restored(self, event: str) -> None:
        self.mark(event)
        self.restore_at = time.monotonic()

    def block(self, number: int) -> None:
        """Blackhole the endpoint and forget its SA; after a graceful DELETE there may be
        no SA left to forget, and the blackhole (added first) is what matters then."""
        try:
            self.lab.space.silent_down(number)
        except SpaceSideError as e:
            log.info("bench: tunnel %s blocked, nothing left to forget (%s)", number, e)


def silent(run: Timeline) -> None:
    run.at(LEAD_S)
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} silently dropped (blackhole, SA forgotten)")
    run.at(LEAD_S + 10)
    run.lab.space.restore(run.active)
    run.restored(f"space: tunnel {run.active} blackhole lifted")


def graceful(run: Timeline) -> None:
    run.at(LEAD_S)
    run.lab.space.graceful_down(run.active)
    run.mark(f"space: tunnel {run.active} DELETE sent")
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} endpoint blocked")
    run.at(LEAD_S + 5)
    run.lab.space.restore(run.active)
    run.restored(f"space: tunnel {run.active} endpoint back")


TELEMETRY_DELAY_S = 10.0  # AWS telemetry turns a replaced tunnel DOWN after it dropped


def telemetry(run: Timeline) -> None:
    """As AWS does it: the tunnel drops silently, its status in the Platform API turns
    DOWN seconds later, and the agent polls the API at its default 30 s."""
    run.at(LEAD_S)
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} silently dropped")
    run.at(LEAD_S + TELEMETRY_DELAY_S)
    run.mark(run.system.announce(run.active, down=True))
    run.at(LEAD_S + 20)
    run.lab.space.restore(run.active)
    run.mark(run.system.announce(run.active, down=False))
    run.restored(f"space: tunnel {run.active} blackhole lifted")


def drain(run: Timeline) -> None:
    run.at(LEAD_S)
    run.mark(run.system.drain(run.active))
    run.at(LEAD_S + 5)
    run.restored(run.system.drain(run.active, undo=True))


@dataclass(frozen=True)
class ScenarioSpec:
    key: str
    name: str
    driver: Callable[[Timeline], None]
    traffic_s: float  # long enough to see plain strongSwan's ~30 s DPD loss where it applies


SCENARIOS = {s.key: s for s in (
    ScenarioSpec("a", "silent", silent, 45.0),
    ScenarioSpec("b", "graceful", graceful, 15.0),
    ScenarioSpec("c", "telemetry", telemetry, 50.0),
    ScenarioSpec("d", "drain", drain, 12.0),
)}
