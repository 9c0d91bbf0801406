"""Durations: every accepted spelling, every rejected one, and the round trip."""

import pytest

from agent.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    "value, seconds",
    [
        (0, 0.0),
        (10, 10.0),
        (2.5, 2.5),
        ("10", 10.0),
        ("1.5", 1.5),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("0.5s", 0.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        ("1s500ms", 1.5),
        ("  10s ", 10.0),
        ("0s", 0.0),
    ],
)
def test_parse_accepts(value, seconds):
    assert parse_duration(value, path="x") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, "-5s", True, False, None, "", "10 s", "1h 30m", "ten", "10sec", "5d", "10S",
     "s", "1.s", float("nan"), float("inf"), [10], {"s": 1}],
)
def test_parse_rejects(value):
    with pytest.raises(ValueError) as err:
        parse_duration(value, path="api.poll_interval")
    assert str(err.value) == (
        f"api.poll_interval: '{value}' is not a duration (use e.g. 10s, 500ms, 5m)"
    )


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.5, "500ms"),
        (0.001, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (10, "10s"),
        (60, "1m"),
        (90, "1m30s"),
        (3600, "1h"),
        (5400, "1h30m"),
        (3661, "1h1m1s"),
        (61.25, "1m1.25s"),
    ],
)
def test_format(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 0.25, 1, 1.5, 30, 59.999, 90, 3599, 5400, 86400.5])
def test_round_trip(seconds):
    assert parse_duration(format_duration(seconds), path="x") == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), 1.8e305, True])
def test_format_rejects(seconds):
    with pytest.raises(ValueError):
        format_duration(seconds)
