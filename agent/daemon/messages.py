"""What other threads post to the loop's inbox (besides charon's events, which the
charon adapter defines). Plain frozen dataclasses: the loop matches on their type.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.adapters.heroku import FetchResult
from agent.core.api_budget import PollPace


@dataclass(frozen=True)
class ApiAnswer:
    key: str
    result: FetchResult


@dataclass(frozen=True)
class ApiFailure:
    key: str
    kind: str  # auth | not_found | unavailable | rate_limited | payload | http
    message: str


@dataclass(frozen=True)
class ApiPace:
    """The API poller's wait before its next round, posted after every round, so
    status and metrics show what it does rather than a guess of it."""

    pace: PollPace


@dataclass(frozen=True)
class Stop:
    """SIGTERM/SIGINT: leave the loop, leave the tunnels up."""


@dataclass(frozen=True)
class Reload:
    """SIGHUP or `agentctl reload`."""


@dataclass(frozen=True)
class ThreadCrashed:
    name: str
    error: str


@dataclass(frozen=True)
class ControlRequest:
    """A write from the control socket (drain, undrain). The loop answers on `reply`
    with (True, result) or (False, message for people)."""

    command: str
    args: dict
    reply: object  # queue.SimpleQueue, put() by the loop thread
    peer: str = ""  # who asked, from the socket's peer credentials: "pid 812, uid 0"
