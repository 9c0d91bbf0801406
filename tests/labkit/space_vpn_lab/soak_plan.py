"""The soak's schedule and where its losses go: maintenance events at seeded random
times (silent and graceful in turn, on the tunnel that carries traffic or on the
standby), and each run of lost pings attributed to the event it follows or to "outside
events". Pure functions over frozen dataclasses, no side effects: the runner plays the
plan and measures, this module decides and counts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

#: Unscaled, for runs of SCALE_FULL_S or more: gaps between one event's end and the next
#: event, and how long an endpoint stays away.
GAP_S = (60.0, 180.0)
DOWN_S = (10.0, 20.0)
SCALE_FULL_S = 1800.0  # from 30 minutes on, the gaps are the full 60-180 s
MIN_GAP_S, MIN_DOWN_S = 5.0, 5.0
#: A loss run belongs to an event when it starts at most this long before the event (the
#: last reply before the blackhole is a few ms older than the event's mark) ...
BEFORE_EVENT_S = 1.0
#: ... or until this long after the endpoint's return (the tunnel coming back as the
#: standby), but never past the next event's start.
SETTLE_S = 30.0
OUTSIDE = "outside events"


class Kind(Enum):
    SILENT = "silent"  # blackhole, SA forgotten: found by the probe or DPD
    GRACEFUL = "graceful"  # DELETE sent, then the endpoint stays away


class Role(Enum):
    ACTIVE = "active"  # the tunnel that carries traffic at the event's time
    STANDBY = "standby"


#: Events cycle through these (kind, role) pairs, so kinds alternate and each kind hits
#: the carrying tunnel half the time.
CYCLE = ((Kind.SILENT, Role.ACTIVE), (Kind.GRACEFUL, Role.ACTIVE),
         (Kind.SILENT, Role.STANDBY), (Kind.GRACEFUL, Role.STANDBY))


@dataclass(frozen=True)
class PlannedEvent:
    index: int
    at_s: float  # seconds from the soak's start
    kind: Kind
    role: Role
    down_s: float  # the endpoint is back at at_s + down_s

    @property
    def end_s(self) -> float:
        return self.at_s + self.down_s


@dataclass(frozen=True)
class Plan:
    seed: int
    duration_s: float
    lead_s: float
    tail_s: float
    events: tuple[PlannedEvent, ...]


def scale_of(duration_s: float) -> float:
    return min(1.0, duration_s / SCALE_FULL_S)


def plan_soak(seed: int, duration_s: float) -> Plan:
    """The events of a soak of `duration_s`, the same for every seed and duration. Gaps
    and downtimes shrink with short durations (60 s still sees an event); nothing is
    planned in the lead (traffic before the first event) or the tail (time left to
    recover after the last). No side effects."""
    if duration_s <= 0:
        raise ValueError(f"duration must be positive, got {duration_s:g} s")
    rng = random.Random(seed)
    scale = scale_of(duration_s)
    gap = (max(MIN_GAP_S, GAP_S[0] * scale), max(2 * MIN_GAP_S, GAP_S[1] * scale))
    down = (max(MIN_DOWN_S, DOWN_S[0] * min(1.0, 2 * scale)), max(2 * MIN_DOWN_S, DOWN_S[1] * min(1.0, 2 * scale)))
    lead = min(30.0, 0.1 * duration_s)
    tail = max(10.0, min(60.0, 0.2 * duration_s))
    events: list[PlannedEvent] = []
    at = lead + rng.uniform(*gap)
    while True:
        kind, role = CYCLE[len(events) % len(CYCLE)]
        down_s = rng.uniform(*down)
        if at + down_s + tail > duration_s:
            break
        events.append(PlannedEvent(len(events), round(at, 3), kind, role, round(down_s, 3)))
        at += down_s + rng.uniform(*gap)
    if not events and duration_s > lead + MIN_DOWN_S:
        # Too short for the scaled gaps: one event right after the lead, as short as allowed.
        down_s = max(1.0, min(MIN_DOWN_S, duration_s - lead - tail))
        events.append(PlannedEvent(0, round(lead, 3), CYCLE[0][0], CYCLE[0][1], round(down_s, 3)))
    return Plan(seed, duration_s, lead, tail, tuple(events))


# --- loss attribution ------------------------------------------------------------------------

@dataclass(frozen=True)
class LossRun:
    """Pings lost in a row: between the replies at after_s and before_s (soak seconds)."""

    after_s: float
    before_s: float
    lost: int


@dataclass(frozen=True)
class EventWindow:
    """Where an event's losses may lie: from its start to the endpoint's return plus SETTLE_S,
    cut at the next event's start."""

    index: int
    start_s: float
    end_s: float


def windows(events: Sequence[tuple[int, float, float]], settle_s: float = SETTLE_S) -> tuple[EventWindow, ...]:
    """(index, start_s, restored_s) of the events as played, in time order -> windows."""
    ordered = sorted(events, key=lambda e: e[1])
    out = []
    for i, (index, start, restored) in enumerate(ordered):
        end = restored + settle_s
        if i + 1 < len(ordered):
            end = min(end, ordered[i + 1][1] - BEFORE_EVENT_S)
        out.append(EventWindow(index, start, max(start, end)))
    return tuple(out)


def owner(run: LossRun, spans: Sequence[EventWindow]) -> int | None:
    """The index of the event a loss run belongs to, None when it lies outside every event."""
    for span in spans:
        if span.start_s - BEFORE_EVENT_S <= run.after_s <= span.end_s:
            return span.index
    return None


@dataclass(frozen=True)
class Attribution:
    by_event: dict[int, tuple[LossRun, ...]]
    outside: tuple[LossRun, ...]

    def lost(self, index: int | None) -> int:
        runs = self.outside if index is None else self.by_event.get(index, ())
        return sum(r.lost for r in runs)


def attribute(runs: Iterable[LossRun], spans: Sequence[EventWindow]) -> Attribution:
    """Every loss run under the event it follows, or outside events. No side effects."""
    by_event: dict[int, list[LossRun]] = {span.index: [] for span in spans}
    outside: list[LossRun] = []
    for run in runs:
        index = owner(run, spans)
        (outside if index is None else by_event[index]).append(run)
    return Attribution({k: tuple(v) for k, v in by_event.items()}, tuple(outside))


def ms_of(lost: int, spacing_s: float) -> int:
    """Lost pings as ms of traffic: lost x the measured spacing (as the failover bench)."""
    return round(lost * spacing_s * 1000)


def share_lost(lost: int, sent: int) -> float | None:
    """Fraction of the pings sent that were lost (0.001 is 0.1 %), None without pings."""
    return lost / sent if sent > 0 else None
