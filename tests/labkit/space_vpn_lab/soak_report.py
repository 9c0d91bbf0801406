"""Pure parts of the soak's report: one pass over `ping -D` output (runs of lost pings,
nothing kept per reply), the trend of a resource sampled over the run (least-squares
slope per hour and a flatness verdict), the agent's unexpected WARNING/ERROR lines,
rekeys counted from charon's log, and the markdown beside the JSON. No side effects.
"""

from __future__ import annotations

import datetime
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from space_vpn_lab.bench_timeline import parse_reply
from space_vpn_lab.soak_plan import OUTSIDE, LossRun
from space_vpn_lab.traffic import TrafficError, parse_summary

# --- one ping segment ---------------------------------------------------------------------------

IN_FLIGHT_S = 1.0  # ping's -W: an echo unanswered for less than this at the stop may be on its way


@dataclass
class SegmentScan:
    """What one ping's `-D` output came to, read line by line."""

    first_reply: float | None = None  # unix s
    last_reply: float | None = None
    last_seq: int = 0
    replies: int = 0
    transmitted: int | None = None  # from ping's summary line
    runs: list[tuple[float, float, int]] = field(default_factory=list)  # (after, before, lost), unix s


def scan_ping(lines: Iterable[str]) -> SegmentScan:
    """Runs of lost pings by sequence number (ping's real spacing is longer than asked
    on a busy machine, so counting by time would invent losses), holding one reply at
    a time. Pings lost before the first reply count from ping's start (the caller knows it)."""
    scan = SegmentScan()
    for line in lines:
        reply = parse_reply(line)
        if reply is None:
            if "packets transmitted" in line:
                try:
                    scan.transmitted = parse_summary(line).transmitted
                except TrafficError:
                    pass
            continue
        at, seq = reply
        if scan.first_reply is None:
            scan.first_reply = at
            if seq > 1:
                scan.runs.append((float("nan"), at, seq - 1))  # before the first reply: caller bounds it
        elif seq > scan.last_seq + 1:
            scan.runs.append((scan.last_reply, at, seq - scan.last_seq - 1))
        if seq > scan.last_seq:
            scan.last_seq, scan.last_reply = seq, at
        scan.replies += 1
    return scan


def segment_losses(scan: SegmentScan, started_unix: float, stopped_unix: float, interrupted: bool,
                   t0_unix: float) -> tuple[int, int, list[LossRun]]:
    """(sent, received, loss runs in soak seconds) of one segment. A segment ping ended by
    itself counts every unanswered echo; one the soak interrupted leaves out the echoes
    after its last reply when that reply is less than IN_FLIGHT_S old (maybe on their way)."""
    sent = scan.transmitted if scan.transmitted is not None else scan.last_seq
    runs = [(started_unix if after != after else after, before, lost) for after, before, lost in scan.runs]
    tail = sent - scan.last_seq
    if scan.last_reply is None:
        if sent:
            runs.append((started_unix, stopped_unix, sent))
    elif tail > 0:
        if interrupted and stopped_unix - scan.last_reply < IN_FLIGHT_S:
            sent = scan.last_seq
        else:
            runs.append((scan.last_reply, stopped_unix, tail))
    return sent, scan.replies, [LossRun(round(a - t0_unix, 3), round(b - t0_unix, 3), n) for a, b, n in runs]


# --- resources over time ------------------------------------------------------------------------

@dataclass(frozen=True)
class Trend:
    first: float
    last: float
    max: float
    slope_per_h: float  # least squares over the judged samples
    drift: float  # slope over the judged span: what the fit says grew
    noise: float  # residuals' standard deviation
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "max": self.max, "slope_per_h": round(self.slope_per_h, 3),
                "drift": round(self.drift, 3), "noise": round(self.noise, 3), "verdict": self.verdict}


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t_s, value) in value per second; 0 for fewer than two times."""
    if len({t for t, _ in points}) < 2:
        return 0.0
    base = points[0][1]  # values as offsets: a constant series has a slope of exactly 0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v - base for _, v in points)
    num = sum((t - mean_t) * (v - base - mean_v) for t, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den if den > 0 else 0.0  # times a few ulps apart square to 0


def trend(points: Sequence[tuple[float, float]], tolerance: float, warmup_share: float = 0.5,
          min_judged: int = 6) -> Trend | None:
    """First/last/max of the samples and a verdict on the later part (after `warmup_share`
    of the run, when it holds `min_judged` samples; else all): "flat within noise" when the
    fitted growth over that span is within `tolerance` (the unit's least meaningful step)
    or twice the residual noise, else "grows" / "shrinks" with the rate per hour."""
    if not points:
        return None
    values = [v for _, v in points]
    start = points[0][0] + (points[-1][0] - points[0][0]) * warmup_share
    judged = [p for p in points if p[0] >= start]
    if len(judged) < min_judged:
        judged = list(points)
    per_s = slope(judged)
    span = judged[-1][0] - judged[0][0]
    drift = per_s * span
    intercept = statistics.fmean(v for _, v in judged) - per_s * statistics.fmean(t for t, _ in judged)
    residuals = [v - (intercept + per_s * t) for t, v in judged]
    noise = statistics.pstdev(residuals) if len(residuals) > 1 else 0.0
    if abs(drift) <= max(tolerance, 2 * noise):
        verdict = "flat within noise"
    else:
        verdict = f"{'grows' if drift > 0 else 'shrinks'} {abs(per_s) * 3600:.3g}/h"
    return Trend(values[0], values[-1], max(values), per_s * 3600, drift, noise, verdict)


#: What counts as no change for each sampled figure.
TOLERANCE = {"rss_kib": 2048.0, "fds": 1.0, "threads": 1.0}


def resource_trends(samples: Sequence[dict[str, Any]], keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    out = {}
    for key in keys:
        points = [(s["t_s"], float(s[key])) for s in samples if s.get(key) is not None]
        found = trend(points, TOLERANCE.get(key, 0.0))
        out[key] = found.as_dict() if found else None
    return out


def cpu_per_hour(samples: Sequence[dict[str, Any]], key: str = "cpu_s") -> float | None:
    """CPU seconds (user + system) per hour of wall time between the first and last sample."""
    points = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return round((points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0]) * 3600, 2)


# --- the agent's log ------------------------------------------------------------------------------

_AGENT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (WARNING|ERROR|CRITICAL) (.*)$")
#: WARNING/ERROR lines a maintenance event explains, each allowed only inside an event's
#: window: the failover itself, the probes that found the loss, re-initiation attempts
#: refused or unanswered while the endpoint is away.
EXPECTED_IN_EVENTS = tuple(re.compile(p) for p in (
    r": failover from tunnel \d to tunnel \d: ",
    r": tunnel \d lost \d+ probes in a row$",
    r"^agent\.daemon\.edges: Initiate\w* failed: ",
))


def local_unix(stamp: str, millis: str) -> float:
    """The agent's asctime (local time) as unix seconds."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def anomalies(lines: Iterable[str], spans: Sequence[tuple[float, float]], t0_unix: float,
              expected: Sequence[re.Pattern] = EXPECTED_IN_EVENTS, keep: int = 200) -> tuple[int, list[dict[str, Any]]]:
    """(count, first `keep`) of the agent's WARNING/ERROR/CRITICAL lines that no event
    explains: outside every (start_s, end_s) span, or not matching an expected pattern.
    Soak seconds from t0_unix; lines before it (start-up) are judged like the rest."""
    count, kept = 0, []
    for line in lines:
        match = _AGENT_LINE.match(line.rstrip("\n"))
        if match is None:
            continue
        stamp, millis, level, text = match.groups()
        t_s = round(local_unix(stamp, millis) - t0_unix, 3)
        in_event = any(start <= t_s <= end for start, end in spans)
        if in_event and any(p.search(text) for p in expected):
            continue
        count += 1
        if len(kept) < keep:
            kept.append({"t_s": t_s, "level": level, "line": text[:400],
                         "where": "during an event" if in_event else OUTSIDE})
    return count, kept


# --- rekeys in charon's log -------------------------------------------------------------------------

#: charon (5.9) answering a CHILD_SA rekey the far end started (IKEv1 Quick Mode with the
#: old SA's selectors): a cross-check of the VICI events the soak counts.
REKEY_PATTERNS = {"child_rekeys_answered": re.compile(r"detected rekeying of CHILD_SA ")}


def count_rekeys(lines: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(REKEY_PATTERNS, 0)
    for line in lines:
        for key, pattern in REKEY_PATTERNS.items():
            if pattern.search(line):
                counts[key] += 1
    return counts
