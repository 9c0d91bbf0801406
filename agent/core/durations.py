"""Durations as the config writes them ("500ms", "10s", "5m", "1h30m") and back.

Pure: seconds are floats everywhere inside the agent; text only at the config edge.
"""

from __future__ import annotations

import math
import re

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# "ms" must come before "m" in the alternation or "500ms" would read as 500m + junk.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object, *, path: str) -> float:
    """Seconds from a number (already seconds) or a string such as "1h30m".

    Raises ValueError naming `path` for negatives, booleans, NaN/inf and anything else."""
    seconds = _seconds_or_none(value)
    if seconds is None:
        raise ValueError(f"{path}: '{value}' is not a duration (use e.g. 10s, 500ms, 5m)")
    return seconds


def _seconds_or_none(value: object) -> float | None:
    # bool is an int subclass; "enabled: yes" landing in a duration is a typo, not 1 s.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _parse_text(text: str) -> float | None:
    if _PLAIN_NUMBER.fullmatch(text):
        return float(text)  # a quoted number means seconds, as an unquoted one does
    if not _WHOLE.fullmatch(text):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest text parse_duration reads back as the same value (to the millisecond):
    0.5 -> "500ms", 90 -> "1m30s", 5400 -> "1h30m", 1.5 -> "1.5s"."""
    # Finite but so large that its milliseconds are not (1e306): no duration either.
    if isinstance(seconds, bool) or not math.isfinite(seconds * 1000) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(f"{rest // 1000}s" if rest % 1000 == 0 else f"{rest / 1000:g}s")
    return "".join(parts)
