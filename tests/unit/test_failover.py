"""The failover state machine and the health it reads: every transition as a table row."""

from __future__ import annotations

import pytest

from dataclasses import replace

from agent.core.failover import (
    LIVENESS_DEADLINE,
    STARTUP_GRACE,
    FailoverKind,
    FailoverPolicy,
    FailoverReason,
    FailoverState,
    IllegalTransition,
    TunnelHealth,
    TunnelProblem,
    assess,
    step,
)
from agent.core.health import InboundWatch, ProbeStats
from agent.core.model import TunnelApiStatus
from agent.core.observation import ChildSa, IkeSa, TunnelSas

NOW = 1000.0
GOOD = TunnelHealth(usable=True)
DOWN = TunnelHealth(usable=False, up=False, problem=TunnelProblem.IKE_DOWN)
PROBES_LOST = TunnelHealth(usable=True, healthy=False, problem=TunnelProblem.PROBES_LOST, detail="3 probes lost",
                           doubtful=True)
SILENT = TunnelHealth(usable=True, healthy=False, problem=TunnelProblem.INBOUND_SILENT)
ANNOUNCED = TunnelHealth(usable=True, telemetry_down=True)
DRAINED = TunnelHealth(usable=True, drained=True)
NO_PREFERENCE = FailoverPolicy()
PREFER_1 = FailoverPolicy(preferred=1, hold_down=60.0)
R_DOWN = FailoverReason(FailoverKind.DOWN, "IKE SA down")
R_PROBES = FailoverReason(FailoverKind.PROBE, "3 probes lost")
R_SILENCE = FailoverReason(FailoverKind.SILENCE, "no inbound packets while sending")
R_TELEMETRY = FailoverReason(FailoverKind.TELEMETRY, "AWS telemetry (Platform API): tunnel DOWN")
R_DRAIN = FailoverReason(FailoverKind.DRAIN, "drained by the operator")
R_FAILBACK_1 = FailoverReason(FailoverKind.FAILBACK, "failback to preferred tunnel 1")


@pytest.mark.parametrize(
    ("active", "one", "two", "expected_active", "reason"),
    [
        (1, GOOD, GOOD, 1, None),
        (1, DOWN, GOOD, 2, R_DOWN),
        (1, PROBES_LOST, GOOD, 2, R_PROBES),
        (1, SILENT, GOOD, 2, R_SILENCE),
        (1, DOWN, DOWN, 1, None),  # both bad: stay, keep trying both
        (1, ANNOUNCED, GOOD, 2, R_TELEMETRY),
        (1, ANNOUNCED, ANNOUNCED, 1, None),  # nowhere better to go
        (1, DRAINED, GOOD, 2, R_DRAIN),
        (1, DRAINED, DOWN, 1, None),  # a drain never moves traffic onto a dead tunnel
        (1, DOWN, DRAINED, 2, R_DOWN),  # an emergency beats a drain
        (2, GOOD, DOWN, 1, R_DOWN),
        (2, GOOD, GOOD, 2, None),  # no preference: no failback
    ],
    ids=["steady", "down", "probes", "silence", "both-down", "telemetry-down", "both-telemetry-down", "drain",
         "drain-onto-dead", "emergency-onto-drained", "down-from-2", "no-failback"],
)
def test_step(active, one, two, expected_active, reason):
    state, why = step(FailoverState(active=active), {1: one, 2: two}, NO_PREFERENCE, NOW)
    assert (state.active, why) == (expected_active, reason)
    if reason:
        assert state.last_switch == NOW


def test_failback_waits_for_a_stable_hold_down():
    state = FailoverState(active=2)
    state, why = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW)
    assert (state.active, why, state.preferred_wanted_since) == (2, None, NOW)
    state, why = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW + 59)
    assert (state.active, why) == (2, None)
    state, why = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW + 60)
    assert (state.active, why) == (1, R_FAILBACK_1)


def test_a_blip_restarts_the_hold_down():
    state = FailoverState(active=2)
    state, _ = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW)
    state, _ = step(state, {1: PROBES_LOST, 2: GOOD}, PREFER_1, NOW + 30)
    assert state.preferred_wanted_since is None
    state, why = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW + 61)
    assert (state.active, why, state.preferred_wanted_since) == (2, None, NOW + 61)


def test_flapping_doubles_the_hold_down():
    state = FailoverState(active=1)
    state, why = step(state, {1: DOWN, 2: GOOD}, PREFER_1, NOW)  # first failure of 1
    assert why == R_DOWN
    assert state.damped_hold_down(1, PREFER_1) == 60.0
    state = FailoverState(active=1, failures=state.failures)
    state, _ = step(state, {1: DOWN, 2: GOOD}, PREFER_1, NOW + 100)  # second failure of 1
    assert state.damped_hold_down(1, PREFER_1) == 120.0
    state, _ = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW + 200)
    state, why = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW + 319)
    assert why is None
    state, why = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW + 320)
    assert why == R_FAILBACK_1


def test_failures_age_out_of_the_flap_window():
    state = FailoverState(active=2, failures=((1, NOW - 601, False), (1, NOW - 10, False)))
    state, _ = step(state, {1: GOOD, 2: GOOD}, PREFER_1, NOW)
    assert state.failures == ((1, NOW - 10, False),)


def test_a_soft_failure_moves_only_to_a_path_that_answers_now():
    """Judge the present, not a memory: both paths failing at once (the uplink, the
    probe target) keeps the traffic where it is; the active failing while the other
    answers moves it at once, however recently the last burst was."""
    both_failing = {1: PROBES_LOST, 2: replace(GOOD, doubtful=True)}
    state, why = step(FailoverState(active=1), both_failing, NO_PREFERENCE, NOW)
    assert (state.active, why) == (1, None)
    state, why = step(state, {1: GOOD, 2: GOOD}, NO_PREFERENCE, NOW + 5)  # the burst is over
    state, why = step(state, {1: PROBES_LOST, 2: GOOD}, NO_PREFERENCE, NOW + 20)  # a real loss of 1
    assert (state.active, why) == (2, R_PROBES)
    # Policy mode after that move: tunnel 1's last word is still "probes lost", so a burst
    # that now hits tunnel 2 as well keeps the traffic on 2 instead of ping-ponging.
    state, why = step(state, {1: PROBES_LOST, 2: PROBES_LOST}, NO_PREFERENCE, NOW + 25)
    assert (state.active, why) == (2, None)
    # A hard failure (no SA) moves even to a doubtful path: it may answer, the dead one never.
    state, why = step(state, {1: replace(GOOD, doubtful=True), 2: DOWN}, NO_PREFERENCE, NOW + 30)
    assert (state.active, why) == (1, R_DOWN)


def test_illegal_states_raise():
    with pytest.raises(IllegalTransition):
        step(FailoverState(active=3), {1: GOOD, 2: GOOD}, NO_PREFERENCE, NOW)
    with pytest.raises(IllegalTransition):
        step(FailoverState(active=1), {1: GOOD}, NO_PREFERENCE, NOW)


def sas(state: str | None = "ESTABLISHED", child: bool = False, established: int | None = 100) -> TunnelSas:
    if state is None:
        return TunnelSas()
    children = (ChildSa("c", "5", "INSTALLED"),) if child else ()
    return TunnelSas((IkeSa("t", "3", state, established=established, children=children),))


def health(**overrides) -> TunnelHealth:
    args = dict(sas=sas(), route_mode=False, is_active=True, ever_usable=True, unusable_since=None,
                probes=None, probe_failures=3, inbound=None, api_status=TunnelApiStatus.UP, api_down_since=None,
                sa_established_at=NOW - 100, drained=False, now=NOW)
    return assess(**{**args, **overrides})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, TunnelHealth(usable=True)),
        ({"sas": sas(None)}, DOWN),
        ({"sas": sas(None), "ever_usable": False, "unusable_since": NOW - STARTUP_GRACE + 1},
         TunnelHealth(usable=True, up=False, problem=TunnelProblem.IKE_DOWN)),  # still coming up at start
        ({"sas": sas(None), "ever_usable": False, "unusable_since": NOW - STARTUP_GRACE}, DOWN),
        ({"route_mode": True}, TunnelHealth(usable=False, up=False, problem=TunnelProblem.NO_CHILD_SA)),
        ({"route_mode": True, "ever_usable": False, "unusable_since": NOW - 1},
         TunnelHealth(usable=True, up=False, problem=TunnelProblem.NO_CHILD_SA)),  # first CHILD_SA a Quick Mode away
        ({"route_mode": True, "sas": sas(child=True)}, TunnelHealth(usable=True, carrying=True)),
        ({"probes": ProbeStats(sa_id="3", sent=9, lost=3, consecutive_failures=3)}, PROBES_LOST),
        ({"probes": ProbeStats(sa_id="3", sent=9, lost=2, consecutive_failures=2)}, TunnelHealth(usable=True, doubtful=True)),
        ({"inbound": InboundWatch("5", 10, 99, NOW - 6, NOW)}, TunnelHealth(usable=True)),  # one-way: IKE answers
        ({"inbound": InboundWatch("5", 10, 99, NOW - 6, NOW), "exchange_pending_since": NOW - 0.5},
         replace(SILENT, doubtful=True)),  # silent, and IKE is waiting for an answer: confirmed
        ({"inbound": InboundWatch("5", 10, 99, NOW - 6, NOW),
          "probes": ProbeStats(sa_id="3", sent=9, lost=1, consecutive_failures=1)},
         replace(SILENT, doubtful=True)),  # silent, and a probe was just lost: confirmed
        ({"exchange_pending_since": NOW - LIVENESS_DEADLINE + 0.1}, TunnelHealth(usable=True, doubtful=True)),
        ({"exchange_pending_since": NOW - LIVENESS_DEADLINE},
         TunnelHealth(usable=True, healthy=False, problem=TunnelProblem.IKE_UNANSWERED,
                      detail="IKE request unanswered for 1.5 s", doubtful=True)),
        ({"inbound": InboundWatch("5", 10, 99, NOW - 6, NOW - 5.5)}, TunnelHealth(usable=True)),  # went idle
        ({"api_status": TunnelApiStatus.DOWN, "api_down_since": NOW - 10},
         TunnelHealth(usable=True, telemetry_down=True)),
        ({"api_status": TunnelApiStatus.DOWN, "api_down_since": NOW - 200},
         TunnelHealth(usable=True)),  # DOWN older than our SA: stale telemetry
        ({"api_status": TunnelApiStatus.DOWN, "api_down_since": NOW - 101},
         TunnelHealth(usable=True, telemetry_down=True)),  # same second as our SA, give or take
        ({"api_status": TunnelApiStatus.DOWN, "api_down_since": NOW - 102},
         TunnelHealth(usable=True)),
        ({"api_status": TunnelApiStatus.DOWN, "api_down_since": NOW - 10, "is_active": False},
         TunnelHealth(usable=True)),  # policy standby: DOWN for AWS by nature
        ({"api_status": TunnelApiStatus.DOWN, "api_down_since": NOW - 10, "is_active": False,
          "route_mode": True, "sas": sas(child=True)}, TunnelHealth(usable=True, telemetry_down=True, carrying=True)),
        ({"drained": True}, TunnelHealth(usable=True, drained=True)),
    ],
    ids=["fine", "no-ike", "startup-grace", "grace-over", "route-no-child", "route-child-coming", "route-child", "probes-lost",
         "probes-almost", "one-way-not-silence", "silence-ike-confirms", "silence-probe-confirms",
         "ike-request-out", "ike-unanswered", "idle-not-silence", "telemetry-down", "stale-down", "down-same-second",
         "down-before-sa", "policy-standby-down",
         "route-standby-telemetry-down", "drained"],
)
def test_assess(overrides, expected):
    assert health(**overrides) == expected


def test_inbound_watch_sees_silence_only_while_sending():
    watch = InboundWatch().update("5", 10, 20, NOW)
    watch = watch.update("5", 10, 25, NOW + 1)  # out grows, in does not
    watch = watch.update("5", 10, 30, NOW + 4)
    assert watch.silent_for(NOW + 9) == 3.0
    assert watch.update("5", 11, 31, NOW + 5).silent_for(NOW + 9) == 0.0  # a reply came
    assert watch.update("6", 0, 1, NOW + 5).silent_for(NOW + 9) == 0.0  # a new CHILD_SA
