"""Where the time goes after a peer's DELETE (scenario b), read from the logs' millisecond
timestamps (charon's filelog with time_add_ms, the agent's logging): the far end closes
its CHILD_SA (from then on what we send over that tunnel is lost), our charon receives the
DELETE, the agent has moved the route. The first stretch is the same for any software on
the customer side; the second is the agent's own. Also each run's per-ping timeline
from `ping -D`: reply times, and the runs of lost pings the record keeps.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from space_vpn_lab.traffic import Pinger, parse_summary

_CHARON_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ")
_AGENT_TIME = re.compile(r"^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3}) ")

PEER_CLOSED = "closing CHILD_SA"
DELETE_RECEIVED = "received DELETE for ESP CHILD_SA"
REROUTED = "CHILD_SA went down: routed via tunnel"
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")


def line_time(line: str) -> float | None:
    """Seconds since local midnight of a charon or agent log line, or None."""
    match = _CHARON_TIME.match(line) or _AGENT_TIME.match(line)
    if match is None:
        return None
    hours, minutes, seconds, millis = (int(g) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def first_at_or_after(text: str, needle: str, after: float) -> float | None:
    """Time of the first line containing `needle` logged at or after `after`."""
    for line in text.splitlines():
        if needle in line:
            at = line_time(line)
            if at is not None and at >= after:
                return at
    return None


def seconds_of_day(unix: float) -> float:
    local = time.localtime(unix)
    return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + unix % 1


def after_delete(space_log: str, customer_log: str, agent_log: str | None, after: float) -> dict[str, int] | None:
    """ms from the far end closing its CHILD_SA to our charon receiving the DELETE, and
    (agent runs) to the route moved; None when the logs do not show the DELETE."""
    closed = first_at_or_after(space_log, PEER_CLOSED, after)
    received = first_at_or_after(customer_log, DELETE_RECEIVED, after)
    if closed is None or received is None:
        return None
    timeline = {"delete_received_ms": round((received - closed) * 1000)}
    rerouted = first_at_or_after(agent_log, REROUTED, after) if agent_log else None
    if rerouted is not None:
        timeline["rerouted_ms"] = round((rerouted - closed) * 1000)
    return timeline


def read_after_delete(workdir: Path, after_unix: float) -> dict[str, int] | None:
    """The same, from the lab logs under `workdir` (space.log, customer.log, agent.log)."""
    logs = {path.name: path.read_text(errors="replace") for path in workdir.rglob("*.log")}
    if "space.log" not in logs or "customer.log" not in logs:
        return None
    return after_delete(logs["space.log"], logs["customer.log"], logs.get("agent.log"), seconds_of_day(after_unix))


def describe(run: dict) -> str | None:
    """One sentence for the table's notes, for a run that has the timeline."""
    timeline = run.get("after_delete")
    if not timeline:
        return None
    text = (f"{run['mode']} b {run['system']}: our charon received the DELETE "
            f"{timeline['delete_received_ms']} ms after the far end closed its CHILD_SA")
    if "rerouted_ms" in timeline:
        text += f"; the route had moved {timeline['rerouted_ms'] - timeline['delete_received_ms']} ms later"
    return text + "."


# --- per-reply times ----------------------------------------------------------------------------

def reply_times(output: str) -> list[float]:
    """Unix times of the replies in `ping -D` output ("[1733200000.123456] 64 bytes from
    ..."), in the order received; other lines (errors, the summary) are skipped."""
    return [float(m.group(1)) for line in output.splitlines() if (m := _REPLY.match(line))]


@dataclass(frozen=True)
class Gap:
    """Pings lost in a row: between the replies at `after` and `before` (unix s)."""

    after: float
    before: float
    lost: int

    @property
    def ms(self) -> int:
        return round((self.before - self.after) * 1000)


def parse_reply(line: str) -> tuple[float, int] | None:
    """(unix time, icmp_seq) of one reply line of `ping -D`, None for any other line."""
    match = _REPLY.match(line)
    return (float(match.group(1)), int(match.group(2))) if match else None


def _replies(output: str) -> list[tuple[float, int]]:
    """(unix time, icmp_seq) of every reply in `ping -D` output."""
    return [reply for line in output.splitlines() if (reply := parse_reply(line)) is not None]


def reply_gaps(output: str) -> list[Gap]:
    """Every run of lost pings in `ping -D` output, by sequence number: ping's real
    interval on a busy machine is longer than asked, so counting by time would invent
    losses."""
    replies = _replies(output)
    return [Gap(t1, t2, s2 - s1 - 1) for (t1, s1), (t2, s2) in zip(replies, replies[1:]) if s2 - s1 > 1]


def ping_timeline(output: str, t0_unix: float, started_unix: float, stopped_unix: float,
                  sent: int) -> dict[str, Any]:
    """The run's replies in a few numbers, seconds from t0_unix: "ping_window" (first and
    last reply, None without any) and "ping_gaps", every run of lost pings as [after_s,
    before_s, lost]. Pings lost before the first reply or after the last one (ping's
    sequence starts at 1; `sent` is its tally) are bounded by ping's start and stop; the
    last echo sent, in flight when ping stopped, is not counted."""
    def rel(unix: float) -> float:
        return round(unix - t0_unix, 3)

    replies = _replies(output)
    if not replies:
        return {"ping_window": None, "ping_gaps": [[rel(started_unix), rel(stopped_unix), sent]] if sent else []}
    (first_at, first_seq), (last_at, last_seq) = replies[0], replies[-1]
    gaps = [[rel(g.after), rel(g.before), g.lost] for g in reply_gaps(output)]
    if first_seq > 1:
        gaps.insert(0, [rel(started_unix), rel(first_at), first_seq - 1])
    # The last echo sent was still in flight when ping was stopped: no loss.
    if sent - 1 > last_seq:
        gaps.append([rel(last_at), rel(stopped_unix), sent - 1 - last_seq])
    return {"ping_window": [rel(first_at), rel(last_at)], "ping_gaps": gaps}


def traffic_back_s(replies: list[float], after_unix: float) -> float | None:
    """Seconds from `after_unix` to the first reply received after it, or None."""
    later = [t for t in replies if t > after_unix]
    return round(min(later) - after_unix, 3) if later else None


class TimedPinger(Pinger):
    """The bench's Pinger with one line per reply (`-D`: with its unix time), written to a
    file rather than a pipe so that a long run never blocks ping on a full pipe. The
    file is bounded by the count (about 80 bytes a reply)."""

    def __init__(self, netns: str, src: str, dst: str, count: int, interval: float, output: Path) -> None:
        super().__init__(netns, src, dst, count, interval)
        self._argv = ["-D" if arg == "-q" else arg for arg in self._argv]
        self.output = output
        self.started_unix = self.stopped_unix = 0.0  # set by start() and when ping ends

    def start(self) -> TimedPinger:
        if self._proc is not None:
            raise RuntimeError("pinger already started")
        self.started_unix = time.time()
        with self.output.open("w") as out:
            self._proc = subprocess.Popen(self._argv, stdout=out, stderr=subprocess.DEVNULL,
                                          stdin=subprocess.DEVNULL, text=True)
        return self

    def _collect(self, timeout: float):
        if self.result is None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._interrupt()
            self.stopped_unix = time.time()
            self.result = parse_summary(self.output.read_text(errors="replace"))
        return self.result

    def replies(self) -> list[float]:
        return reply_times(self.output.read_text(errors="replace"))

    def timeline(self, t0_unix: float) -> dict[str, Any]:
        """ping_timeline of the finished ping, seconds from t0_unix."""
        return ping_timeline(self.output.read_text(errors="replace"), t0_unix, self.started_unix,
                             self.stopped_unix, self.sent)
