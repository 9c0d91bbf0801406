"""Which tunnel carries traffic: one failover state machine for both modes.

The modes differ only in how a switch is carried out (policy: make-before-break of the
CHILD_SA; route: move the route) and in what "usable" means, which `assess` folds into
TunnelHealth. `step` holds every transition. No side effects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from agent.core.health import InboundWatch, ProbeStats, probe_healthy
from agent.core.model import TunnelApiStatus
from agent.core.observation import IkeState, TunnelSas

# A tunnel never established since the agent started gets this long before the other
# one takes over (both are initiated together at a cold start).
STARTUP_GRACE = 10.0  # s
# Outbound packets without any inbound one for this long make a tunnel suspect; it counts
# as failed only when IKE or a probe confirms (traffic may be one-way by nature).
SILENCE_TIMEOUT = 3.0  # s
# An IKE exchange (DPD, rekey, Quick Mode...) left unanswered this long: the peer is gone.
# A live peer answers within a round trip; charon's first retransmit waits 4 s.
LIVENESS_DEADLINE = 1.5  # s
# The API's last_status_change and charon's "established" are both whole seconds: a DOWN
# stamped up to this much before our SA came up may well have happened after it.
TIMESTAMP_SLACK = 2.0  # s


class IllegalTransition(Exception):
    """A state the machine cannot be in (a bug, not an operational condition)."""


class TunnelRole(enum.StrEnum):
    ACTIVE = "active"  # carries the traffic
    STANDBY = "standby"  # ready to take it over


class TunnelProblem(enum.StrEnum):
    """Why a tunnel cannot carry traffic now: the health verdict failover and status share."""

    NO_CHILD_SA = "no CHILD_SA"  # route mode: nothing installed under its interface
    IKE_DOWN = "IKE SA down"  # policy mode: no established IKE SA
    PROBES_LOST = "probes lost"
    IKE_UNANSWERED = "IKE exchange unanswered"  # DPD or another request, past LIVENESS_DEADLINE
    INBOUND_SILENT = "no inbound packets while sending"  # and IKE or a probe confirms


class FailoverKind(enum.StrEnum):
    """What moved the traffic; metrics count failovers by it."""

    DOWN = "down"  # the active tunnel's SAs went (peer DELETE, DPD, charon)
    PROBE = "probe"  # its data-path probes went unanswered
    LIVENESS = "liveness"  # its IKE exchanges went unanswered
    SILENCE = "silence"  # packets out, none in, confirmed by IKE or a probe
    TELEMETRY = "telemetry"  # the Platform API (AWS telemetry) reports it DOWN: a late confirmation
    DRAIN = "drain"  # the operator drained it
    ROLL = "roll"  # it runs settings the far end replaced; the other runs the new ones
    FAILBACK = "failback"  # back to the preferred tunnel after a stable hold-down


_KIND_OF_PROBLEM = {TunnelProblem.PROBES_LOST: FailoverKind.PROBE, TunnelProblem.IKE_UNANSWERED: FailoverKind.LIVENESS,
                    TunnelProblem.INBOUND_SILENT: FailoverKind.SILENCE}


@dataclass(frozen=True)
class FailoverReason:
    kind: FailoverKind
    detail: str  # for people, e.g. "3 probes lost"; never parsed


@dataclass(frozen=True)
class TunnelHealth:
    """Everything the failover decision (and the status verdict) needs to know about
    one tunnel."""

    usable: bool  # its SAs could carry traffic right now (or it is still coming up)
    healthy: bool = True  # no failure signal: probes answered, no inbound silence
    telemetry_down: bool = False  # AWS telemetry (Platform API) says DOWN, stamped after our SA came up
    drained: bool = False  # the operator asked to move traffic away
    retiring: bool = False  # runs settings the far end replaced, while the other runs the new ones
    problem: TunnelProblem | None = None  # set whenever the tunnel is not up and healthy
    detail: str = ""  # the problem for people, with figures
    up: bool = True  # usable without any start-up grace
    carrying: bool = False  # holds an installed CHILD_SA
    doubtful: bool = False  # not failed, but not answering right now either (a probe lost, an IKE request out)

    @property
    def can_carry(self) -> bool:
        return self.usable and self.healthy

    @property
    def ready(self) -> bool:
        """Up and healthy for real (no start-up grace): what redundancy means."""
        return self.up and self.healthy

    @property
    def wanted(self) -> bool:
        """A tunnel traffic may be moved to by choice (not only in an emergency)."""
        return self.can_carry and not self.telemetry_down and not self.drained and not self.retiring

    @property
    def describe(self) -> str:
        return self.detail or (self.problem.value if self.problem else "")


@dataclass(frozen=True)
class FailoverPolicy:
    preferred: int | None = None  # failback target; None = stay where traffic is
    hold_down: float = 60.0  # s the preferred tunnel must stay wanted before failback
    flap_window: float = 600.0  # s over which failures of a tunnel are counted
    max_hold_down: float = 600.0  # s, cap of the damped hold-down


@dataclass(frozen=True)
class FailoverState:
    active: int
    last_switch: float | None = None  # monotonic s
    preferred_wanted_since: float | None = None  # monotonic s
    # (tunnel, monotonic s, soft) within flap_window; soft = usable but failing probes
    failures: tuple[tuple[int, float, bool], ...] = ()

    def damped_hold_down(self, tunnel: int, policy: FailoverPolicy) -> float:
        """Each recent failure of `tunnel` doubles the hold-down (flap damping)."""
        flaps = sum(1 for number, _, _ in self.failures if number == tunnel)
        return min(policy.max_hold_down, policy.hold_down * 2 ** max(0, flaps - 1))


def step(
    state: FailoverState, health: dict[int, TunnelHealth], policy: FailoverPolicy, now: float
) -> tuple[FailoverState, FailoverReason | None]:
    """The next state, and the reason when traffic moves (None when it stays)."""
    if state.active not in (1, 2) or set(health) != {1, 2}:
        raise IllegalTransition(f"active tunnel {state.active} with health for {sorted(health)}")
    current, other = state.active, 3 - state.active
    here, there = health[current], health[other]
    failures = tuple(f for f in state.failures if now - f[1] < policy.flap_window)
    state = replace(state, failures=failures, preferred_wanted_since=_wanted_since(state, health, policy, now))

    if not here.can_carry and there.can_carry:
        soft = here.usable  # up, but its probes (or IKE, or inbound packets) say otherwise
        # Judge the present: a soft failure moves traffic only to a path that answers now.
        # Both paths failing at once (the customer's uplink, the probe target) is no
        # reason to move: stay, and say so in status.
        if not (soft and there.doubtful):
            # ACTIVE -> STANDBY (current), STANDBY -> ACTIVE (other): an emergency, so
            # even a drained tunnel, or one AWS reports DOWN, takes the traffic rather than lose it.
            kind = _KIND_OF_PROBLEM.get(here.problem, FailoverKind.DOWN)  # type: ignore[arg-type]
            reason = FailoverReason(kind, here.describe or "tunnel unusable")
            return _switch(state, other, now, failures + ((current, now, soft),)), reason
    if here.can_carry and (here.drained or here.telemetry_down or here.retiring) and there.wanted:
        # ACTIVE -> STANDBY, STANDBY -> ACTIVE: the operator's drain, a settings roll (the
        # other tunnel is up on the far end's new settings), or AWS telemetry confirming
        # the tunnel is down (DOWN arrives after the loss, never before it).
        if here.drained:
            reason = FailoverReason(FailoverKind.DRAIN, "drained by the operator")
        elif here.retiring:
            reason = FailoverReason(FailoverKind.ROLL, f"new far-end settings: tunnel {other} is up on them")
        else:
            reason = FailoverReason(FailoverKind.TELEMETRY, "AWS telemetry (Platform API): tunnel DOWN")
        flap = () if here.drained or here.retiring else ((current, now, False),)  # a DOWN tunnel may flap
        return _switch(state, other, now, failures + flap), reason
    preferred = policy.preferred
    if preferred == other and here.can_carry and there.wanted and state.preferred_wanted_since is not None:
        settled = now - state.preferred_wanted_since >= state.damped_hold_down(other, policy)
        if settled:
            # ACTIVE -> STANDBY, STANDBY -> ACTIVE: failback after a stable hold-down.
            return _switch(state, other, now, failures), FailoverReason(FailoverKind.FAILBACK,
                                                                        f"failback to preferred tunnel {other}")
    return state, None  # ACTIVE stays ACTIVE


def _wanted_since(state: FailoverState, health: dict[int, TunnelHealth], policy: FailoverPolicy,
                  now: float) -> float | None:
    if policy.preferred is None or not health[policy.preferred].wanted:
        return None
    return state.preferred_wanted_since if state.preferred_wanted_since is not None else now


def _switch(state: FailoverState, to: int, now: float, failures: tuple[tuple[int, float, bool], ...]) -> FailoverState:
    return FailoverState(active=to, last_switch=now, preferred_wanted_since=None, failures=failures)


def assess(
    *,
    sas: TunnelSas,
    route_mode: bool,
    is_active: bool,
    ever_usable: bool,
    unusable_since: float | None,
    probes: ProbeStats | None,
    probe_failures: int,
    inbound: InboundWatch | None,
    api_status: TunnelApiStatus,
    api_down_since: float | None,
    sa_established_at: float | None,
    drained: bool,
    now: float,
    exchange_pending_since: float | None = None,
    retiring: bool = False,
) -> TunnelHealth:
    """Fold what is known of one tunnel into TunnelHealth. Times: `now` and
    `unusable_since` and `exchange_pending_since` (an IKE request of ours has been in
    flight since) monotonic; `api_down_since` and `sa_established_at` unix.

    usable: route mode needs an installed CHILD_SA; policy mode an established IKE SA
    (the active tunnel's child is re-initiated on it in one Quick Mode). A tunnel never
    usable since the agent started counts as usable for STARTUP_GRACE: still coming up
    (IKEv1 has its IKE SA a Quick Mode before its CHILD_SA).
    healthy: no failure signal: probes answered, no IKE request unanswered for
    LIVENESS_DEADLINE, no confirmed inbound silence (outbound without any inbound packet
    for SILENCE_TIMEOUT while IKE or a probe is in doubt: a one-way stream alone is fine).
    telemetry_down: AWS telemetry turned DOWN after our SA came up. A DOWN older than our SA
    is stale telemetry (e.g. at start), and in policy mode a standby without CHILD_SA
    is DOWN for AWS by nature: neither announces anything."""
    if route_mode:
        up, problem = sas.installed_child is not None, TunnelProblem.NO_CHILD_SA
    else:
        up, problem = sas.ike_state is IkeState.ESTABLISHED, TunnelProblem.IKE_DOWN
    usable = up
    if not up and not ever_usable and unusable_since is not None:
        usable = now - unusable_since < STARTUP_GRACE
    pending = now - exchange_pending_since if exchange_pending_since is not None else None
    doubtful = pending is not None or (probes is not None and probes.consecutive_failures > 0)
    healthy, detail = True, ""
    if not probe_healthy(probes, probe_failures):
        assert probes is not None  # probe_healthy says None is healthy
        healthy, problem = False, TunnelProblem.PROBES_LOST
        detail = f"{probes.consecutive_failures} probes lost"
    elif pending is not None and pending >= LIVENESS_DEADLINE:
        healthy, problem = False, TunnelProblem.IKE_UNANSWERED
        detail = f"IKE request unanswered for {pending:.1f} s"
    elif inbound is not None and inbound.silent_for(now) >= SILENCE_TIMEOUT and doubtful:
        healthy, problem = False, TunnelProblem.INBOUND_SILENT
    telemetry_down = (
        api_status is TunnelApiStatus.DOWN
        and (route_mode or is_active)
        and api_down_since is not None
        and sa_established_at is not None
        and sa_established_at < api_down_since + TIMESTAMP_SLACK
    )
    fine = up and healthy
    return TunnelHealth(usable=usable, healthy=healthy, telemetry_down=telemetry_down, drained=drained,
                        retiring=retiring, problem=None if fine else problem, detail="" if fine else detail, up=up,
                        carrying=sas.installed_child is not None, doubtful=doubtful)
