"""Where the time goes after a peer's DELETE (scenario b), read from the logs' millisecond
timestamps (charon's filelog with time_add_ms, the agent's logging): the far end closes
its CHILD_SA (from then on what we send over that tunnel is lost), our charon receives the
DELETE, the agent has moved the route. The first stretch is the same for any software on
the customer side; the second is the agent's own.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

_CHARON_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) ")
_AGENT_TIME = re.compile(r"^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d{3}) ")

PEER_CLOSED = "closing CHILD_SA"
DELETE_RECEIVED = "received DELETE for ESP CHILD_SA"
REROUTED = "CHILD_SA went down: routed via tunnel"


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
