"""The soak's schedule from a seed, and its losses attributed to the events they follow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from space_vpn_lab.soak_plan import (
    CYCLE,
    OUTSIDE,
    EventWindow,
    Kind,
    LossRun,
    Role,
    attribute,
    ms_of,
    owner,
    plan_soak,
    share_lost,
    windows,
)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    assert plan_soak(7, 1800) == plan_soak(7, 1800)
    assert plan_soak(7, 1800).events != plan_soak(8, 1800).events


def test_a_sixty_second_smoke_still_sees_an_event_that_ends_in_time():
    plan = plan_soak(1, 60)
    assert plan.events
    assert all(e.end_s + plan.tail_s <= 60 for e in plan.events)
    assert plan.events[0].at_s >= plan.lead_s


def test_half_an_hour_uses_the_full_gaps_and_downtimes():
    plan = plan_soak(3, 1800)
    starts = [e.at_s for e in plan.events]
    gaps = [b - a.end_s for a, b in zip(plan.events, starts[1:])]
    assert all(60 <= g <= 180 for g in gaps)
    assert all(10 <= e.down_s <= 20 for e in plan.events)


def test_kinds_alternate_and_each_hits_the_carrying_tunnel_half_the_time():
    events = plan_soak(5, 7200).events
    assert [(e.kind, e.role) for e in events[:4]] == list(CYCLE)
    silent = [e.role for e in events if e.kind is Kind.SILENT]
    assert abs(silent.count(Role.ACTIVE) - silent.count(Role.STANDBY)) <= 1


def test_a_duration_must_be_positive():
    with pytest.raises(ValueError):
        plan_soak(1, 0)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), duration=st.floats(20, 4 * 3600))
def test_any_schedule_is_sorted_within_the_duration_and_alternates(seed, duration):
    plan = plan_soak(seed, duration)
    events = plan.events
    assert [e.index for e in events] == list(range(len(events)))
    assert all(a.end_s < b.at_s for a, b in zip(events, events[1:]))  # sorted, never overlapping
    assert all(0 < e.at_s and e.end_s <= duration for e in events)
    assert all(a.kind is not b.kind for a, b in zip(events, events[1:]))
    if duration >= 60:
        assert events


# --- attribution -------------------------------------------------------------------------------

PLAYED = [(0, 100.0, 115.0), (1, 130.0, 140.0)]


def test_windows_run_from_each_start_until_the_settle_time_or_the_next_event():
    assert windows(PLAYED, settle_s=30) == (EventWindow(0, 100.0, 129.0), EventWindow(1, 130.0, 170.0))


@pytest.mark.parametrize("after_s, expected", [
    (99.5, 0),  # the last reply came just before the blackhole
    (100.2, 0),
    (128.9, 0),
    (129.5, 1),  # just before the next event's mark: the next event's
    (131.0, 1),
    (169.0, 1),
    (171.0, None),  # long after the second event: a loss of its own
    (50.0, None),
])
def test_a_loss_run_belongs_to_the_event_it_follows(after_s, expected):
    assert owner(LossRun(after_s, after_s + 0.3, 20), windows(PLAYED, settle_s=30)) == expected


def test_attribution_sums_per_event_and_outside():
    runs = [LossRun(100.1, 100.5, 30), LossRun(101.0, 101.1, 2), LossRun(150.0, 150.1, 3), LossRun(10.0, 10.05, 1)]
    found = attribute(runs, windows(PLAYED, settle_s=30))
    assert found.lost(0) == 32 and found.lost(1) == 3 and found.lost(None) == 1
    assert found.outside == (LossRun(10.0, 10.05, 1),)
    assert OUTSIDE == "outside events"


def test_ms_and_share():
    assert ms_of(30, 0.0125) == 375
    assert share_lost(1, 1000) == 0.001
    assert share_lost(0, 0) is None


def test_the_command_reads_durations_as_the_config_writes_them():
    from space_vpn_lab.cli import _parser

    args = _parser().parse_args(["soak", "--duration", "2h", "--segment", "90s"])
    assert (args.duration, args.segment, args.systems) == (7200.0, 90.0, "agent,strongswan")
    assert _parser().parse_args(["soak"]).duration == 1800.0
    for bad in ("0s", "soon"):
        with pytest.raises(SystemExit):
            _parser().parse_args(["soak", "--duration", bad])
