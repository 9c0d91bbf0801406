"""The Platform API budget rule: when a low rate-limit pool stretches polling, by how
much, and the bounds it keeps (table-driven, then properties over any input)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.core.api_budget import LOW_BUDGET, MAX_STRETCH, REFILL_PER_SECOND, SHARE_AT_LOW, poll_pace


@pytest.mark.parametrize(
    "base, remaining, calls, interval",
    [
        (30.0, None, 1, 30.0),  # nothing reported: as configured
        (30.0, 4500, 1, 30.0),
        (1.0, LOW_BUDGET, 1, 1.0),  # at the threshold: not yet
        (1.0, 999, 1, 8000 / 999),  # just below: 10% of the refill, one call per ~8 s
        (1.0, 500, 1, 16.0),
        (30.0, 500, 1, 30.0),  # 16 s would be faster than configured: the floor holds
        (30.0, 212, 1, 8000 / 212),
        (1.0, 100, 1, 80.0),
        (1.0, 100, 3, 240.0),  # three connections: three calls a round
        (1.0, 10, 1, MAX_STRETCH),  # 800 s wanted: capped
        (1.0, 0, 1, MAX_STRETCH),  # empty (or a 429)
        (600.0, 0, 1, 600.0),  # a configured interval beyond the cap stays
        (1.0, -5, 1, MAX_STRETCH),  # a negative count from outside is an empty pool
    ],
)
def test_interval_for_budget(base, remaining, calls, interval):
    pace = poll_pace(base, remaining, calls)
    assert pace.interval == pytest.approx(interval)
    assert pace.stretched == (pace.interval > base)
    assert pace.base_interval == base and pace.calls_per_round == calls


def test_pace_reports_what_it_was_decided_on():
    pace = poll_pace(30.0, 212)
    assert (pace.remaining, pace.stretched, round(pace.interval)) == (212, True, 38)
    assert poll_pace(1.0, -5).remaining == 0


def test_a_base_interval_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="base_interval must be positive"):
        poll_pace(0.0, 100)


bases = st.floats(min_value=0.1, max_value=3600, allow_nan=False)
budgets = st.one_of(st.none(), st.integers(min_value=-10, max_value=10_000))
calls = st.integers(min_value=1, max_value=20)


@given(bases, budgets, calls)
def test_never_faster_than_the_base_and_never_slower_than_the_cap(base, remaining, n):
    interval = poll_pace(base, remaining, n).interval
    assert base <= interval <= max(base, MAX_STRETCH)


@given(bases, st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=10_000), calls)
def test_less_budget_never_polls_faster(base, a, b, n):
    low, high = sorted((a, b))
    assert poll_pace(base, low, n).interval >= poll_pace(base, high, n).interval


@given(bases, budgets, st.integers(min_value=1, max_value=10), st.integers(min_value=1, max_value=10))
def test_more_connections_never_poll_faster(base, remaining, a, b):
    few, many = sorted((a, b))
    assert poll_pace(base, remaining, many).interval >= poll_pace(base, remaining, few).interval


@given(bases, st.integers(min_value=1, max_value=LOW_BUDGET - 1), calls)
def test_below_the_threshold_the_agent_takes_at_most_its_share_of_the_refill(base, remaining, n):
    pace = poll_pace(base, remaining, n)
    if pace.interval < MAX_STRETCH:  # the cap is the one place the share may be exceeded
        share = REFILL_PER_SECOND * SHARE_AT_LOW * remaining / LOW_BUDGET
        assert n / pace.interval <= share * (1 + 1e-9)


@given(bases, st.one_of(st.none(), st.integers(min_value=LOW_BUDGET, max_value=10_000)), calls)
def test_with_enough_budget_polling_is_as_configured(base, remaining, n):
    pace = poll_pace(base, remaining, n)
    assert pace.interval == base and not pace.stretched
