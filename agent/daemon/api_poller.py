"""Polls the Platform API for every Heroku connection on its own thread and posts
each answer (or failure) to the loop's inbox. The loop alone decides what it means.

Polls every `api.poll_interval`, faster while a connection is being provisioned
(like `heroku spaces:vpn:wait`, every 10 s), slower while the token's rate-limit pool
runs low (`core/api_budget.poll_pace`, from the last `RateLimit-Remaining`; a 429 counts
as an empty pool). The adapter retries within one poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.adapters.heroku import PlatformApi, PlatformApiError
from agent.core.api_budget import PollPace, poll_pace
from agent.daemon.messages import ApiAnswer, ApiFailure, ApiPace, ThreadCrashed

log = logging.getLogger(__name__)

WAIT_POLL_INTERVAL = 10.0  # s, as `heroku spaces:vpn:wait`


@dataclass(frozen=True)
class PollTarget:
    key: str
    space: str
    vpn: str


class ApiPoller:
    """One thread for all connections: a gateway serves a handful of spaces at most."""

    def __init__(
        self,
        api: PlatformApi,
        targets: list[PollTarget],
        post: Callable[[object], None],
        *,
        interval: float,
    ) -> None:
        self._api = api
        self._targets = targets
        self._post = post
        self._interval = interval
        self._etags: dict[str, str | None] = {}
        self._waiting: set[str] = set()  # keys whose connection is still provisioning
        self._remaining: int | None = None  # the pool's tokens as last reported (one pool per token)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Asks the thread to stop and returns at once: a request in flight ends on its own
        (within api.timeout and its retries), then the thread closes its client and ends.
        Nothing it learns after this is posted: a reload's new poller answers instead."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the thread to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _mark_waiting(self, key: str, waiting: bool) -> None:
        """A connection still pending/provisioning is polled faster."""
        (self._waiting.add if waiting else self._waiting.discard)(key)

    def _run(self) -> None:
        try:
            self._poll_forever()
        except Exception as e:  # tell the loop; status then shows the API as failing
            log.exception("API poller crashed")
            self._send(ThreadCrashed("api-poller", f"{type(e).__name__}: {e}"))
        finally:
            self._api.close()  # on this thread: never under a request still in flight

    def _send(self, message: object) -> None:
        if not self._stop.is_set():  # a stopped poller's late news would be stale
            self._post(message)

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            pace = self.poll_round()
            if pace is None:
                return
            self._wake.wait(pace.interval)
            self._wake.clear()

    def poll_round(self) -> PollPace | None:
        """Poll every target once, then post and return the wait before the next
        round (None when asked to stop half-way)."""
        for target in self._targets:
            if self._stop.is_set():
                return None
            self._poll(target)
        pace = self.pace()
        self._send(ApiPace(pace))
        return pace

    def pace(self) -> PollPace:
        base = min(WAIT_POLL_INTERVAL, self._interval) if self._waiting else self._interval
        return poll_pace(base, self._remaining, len(self._targets))

    def _poll(self, target: PollTarget) -> None:
        try:
            result = self._api.get_vpn_connection(target.space, target.vpn, etag=self._etags.get(target.key))
        except PlatformApiError as e:
            # A connection not found may be one created a moment ago: look again soon.
            self._mark_waiting(target.key, e.kind == "not_found")
            self._note_budget(e.rate_limit_remaining)
            self._send(ApiFailure(target.key, e.kind, str(e)))
            return
        except Exception as e:  # a bug here must not kill polling for good
            log.exception("polling %s/%s failed unexpectedly", target.space, target.vpn)
            self._send(ApiFailure(target.key, "internal", type(e).__name__))
            return
        self._note_budget(result.rate_limit_remaining)
        if result.etag:
            self._etags[target.key] = result.etag
        if result.answer is not None:
            self._mark_waiting(target.key, result.answer.status.is_waiting)
        self._send(ApiAnswer(target.key, result))

    def _note_budget(self, remaining: int | None) -> None:
        # Every connection draws on the same pool: the latest answer is the truth.
        if remaining is not None:
            self._remaining = remaining
