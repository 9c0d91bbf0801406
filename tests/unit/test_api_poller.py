"""The API poller's rounds against a scripted Platform API: what it posts, and the wait it
picks from the last RateLimit-Remaining (the rule itself: test_api_budget)."""

from __future__ import annotations

import threading
import time

import pytest

from agent.adapters.heroku import ApiUnavailable, FetchResult
from agent.core.api_budget import MAX_STRETCH
from agent.core.payload import parse_vpn_connection
from agent.daemon.api_poller import WAIT_POLL_INTERVAL, ApiPoller, PollTarget
from agent.daemon.messages import ApiAnswer, ApiFailure, ApiPace
from tests.unit.test_controller import vpn_json

OFFICE = PollTarget("acme-space-office", "acme-space", "office")
LAB = PollTarget("acme-space-lab", "acme-space", "lab")


class ScriptedApi:
    """Answers each GET with the next scripted outcome: a rate-limit count (a 304 carrying
    it), a FetchResult, or an exception to raise. Records when each call came."""

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, float]] = []
        self.closed = False

    def get_vpn_connection(self, space: str, vpn: str, etag: str | None = None) -> FetchResult:
        self.calls.append((vpn, time.monotonic()))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, Exception):
            raise outcome
        if isinstance(outcome, FetchResult):
            return outcome
        return FetchResult(None, None, '"etag"', outcome)

    def close(self) -> None:
        self.closed = True


def poller(api: ScriptedApi, *targets: PollTarget, interval: float = 30.0) -> tuple[ApiPoller, list[object]]:
    posted: list[object] = []
    return ApiPoller(api, list(targets) or [OFFICE], posted.append, interval=interval), posted


def rate_limited() -> ApiUnavailable:
    error = ApiUnavailable("space acme-space vpn office: HTTP 429 (rate_limit: )", status=429, kind="rate_limited")
    error.rate_limit_remaining = 0
    return error


def test_a_round_posts_each_answer_then_its_pace():
    api = ScriptedApi(4000)
    p, posted = poller(api, OFFICE, LAB)
    pace = p.poll_round()
    assert [type(m) for m in posted] == [ApiAnswer, ApiAnswer, ApiPace]
    assert posted[-1] == ApiPace(pace)
    assert (pace.interval, pace.stretched, pace.remaining, pace.calls_per_round) == (30.0, False, 4000, 2)


def test_a_low_budget_stretches_the_wait_by_the_rule():
    p, _ = poller(ScriptedApi(212))
    pace = p.poll_round()
    assert pace.stretched and pace.interval == pytest.approx(8000 / 212)


def test_the_last_answer_of_a_round_is_the_budget_and_every_call_counts():
    p, _ = poller(ScriptedApi(900, 400), OFFICE, LAB, interval=1.0)
    pace = p.poll_round()
    assert pace.remaining == 400
    assert pace.interval == pytest.approx(2 * 8000 / 400)  # two calls a round


def test_a_429_stretches_to_the_cap_and_is_still_posted_as_a_failure():
    p, posted = poller(ScriptedApi(rate_limited()))
    pace = p.poll_round()
    assert pace.interval == MAX_STRETCH and pace.remaining == 0
    assert isinstance(posted[0], ApiFailure) and posted[0].kind == "rate_limited"


def test_a_failure_without_an_answer_keeps_the_last_known_budget():
    unreachable = ApiUnavailable("space acme-space vpn office: cannot reach the API")
    p, _ = poller(ScriptedApi(200, unreachable))
    first, second = p.poll_round(), p.poll_round()
    assert first.remaining == second.remaining == 200
    assert second.interval == first.interval > 30.0


def test_polling_returns_to_the_interval_once_the_pool_refills():
    p, _ = poller(ScriptedApi(100, 2500))
    assert p.poll_round().stretched
    pace = p.poll_round()
    assert not pace.stretched and pace.interval == 30.0


def test_a_provisioning_connection_polls_faster_but_the_budget_still_rules():
    raw = vpn_json(status="provisioning")
    provisioning = FetchResult(parse_vpn_connection(raw), raw, '"p"', 3000)
    p, _ = poller(ScriptedApi(provisioning))
    assert p.poll_round().interval == WAIT_POLL_INTERVAL
    p, _ = poller(ScriptedApi(FetchResult(parse_vpn_connection(raw), raw, '"p"', 500)))
    pace = p.poll_round()
    assert pace.base_interval == WAIT_POLL_INTERVAL and pace.interval == pytest.approx(16.0)


def test_the_thread_waits_what_the_pace_says():
    """Real time, short: with 999 left and interval 0.05 s the thread must wait ~8 s, so
    within a second it makes exactly one call; with a full pool it makes many."""
    for remaining, expect_many in ((4000, True), (999, False)):
        api = ScriptedApi(remaining)
        p, posted = poller(api, interval=0.05)
        p.start()
        time.sleep(1.0)
        p.stop()
        assert p.join(2.0) and api.closed
        assert (len(api.calls) > 5) is expect_many, (remaining, len(api.calls))


def test_stop_wakes_a_stretched_wait_at_once():
    api = ScriptedApi(0)
    p, _ = poller(api, interval=1.0)
    p.start()
    while not api.calls:
        time.sleep(0.01)
    started = time.monotonic()
    p.stop()
    assert p.join(2.0)
    assert time.monotonic() - started < 2.0
    assert not any(t.name == "api-poller" and t.is_alive() for t in threading.enumerate())


class StuckApi(ScriptedApi):
    """A request that hangs until released, like a server trickling its answer."""

    def __init__(self, *outcomes) -> None:
        super().__init__(*outcomes)
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_vpn_connection(self, space: str, vpn: str, etag: str | None = None) -> FetchResult:
        self.entered.set()
        assert self.release.wait(10)
        return super().get_vpn_connection(space, vpn, etag)


def test_stop_returns_at_once_while_a_request_hangs_and_the_late_answer_is_dropped():
    raw = vpn_json()
    api = StuckApi(FetchResult(parse_vpn_connection(raw), raw, '"e"', 4000))
    p, posted = poller(api)
    p.start()
    assert api.entered.wait(5)
    started = time.monotonic()
    p.stop()
    assert time.monotonic() - started < 0.1  # the loop thread is not held
    assert not api.closed  # never closed under the request in flight
    api.release.set()
    assert p.join(5.0)
    assert api.closed  # the thread closed it on its way out
    assert posted == []  # the answer came after stop: the new poller's news counts, not this


def test_a_reload_does_not_wait_for_the_old_poller(monkeypatch):
    """Daemon._start_poller on the loop thread, while the old poller hangs in a request."""
    from types import SimpleNamespace

    from agent.config import AgentConfig, ApiConfig, ConnectionConfig
    from agent.daemon.main import Daemon

    old_api = StuckApi(4000)
    old, _ = poller(old_api)
    old.start()
    assert old_api.entered.wait(5)
    posted: list[object] = []
    daemon = object.__new__(Daemon)  # only what _start_poller uses: the rest needs a gateway
    daemon._poller, daemon._poll_key, daemon._controller = old, None, SimpleNamespace(post=posted.append)
    monkeypatch.setenv("HEROKU_API_KEY", "hrku-test-token-0123456789")
    monkeypatch.setattr("agent.daemon.main.PlatformApi", lambda *args, **kwargs: ScriptedApi(4000))
    config = AgentConfig(api=ApiConfig(url="http://127.0.0.1:9", poll_interval=30.0),
                         connections=(ConnectionConfig(space="acme-space", vpn="lab"),))
    started = time.monotonic()
    daemon._start_poller(config)
    try:
        assert time.monotonic() - started < 0.5
        assert daemon._poller is not old
    finally:
        daemon._poller.stop()
        old_api.release.set()
    assert old.join(5.0) and daemon._poller.join(5.0)


def test_a_reload_that_changes_nothing_keeps_the_poller(monkeypatch):
    """A SIGHUP storm must not become a storm of API calls: each new poller polls at once."""
    from dataclasses import replace
    from types import SimpleNamespace

    from agent.config import AgentConfig, ApiConfig, ConnectionConfig
    from agent.daemon.main import Daemon

    built: list[ScriptedApi] = []

    def new_api(*args, **kwargs):
        built.append(ScriptedApi(4000))
        return built[-1]
    daemon = object.__new__(Daemon)
    daemon._poller, daemon._poll_key, daemon._controller = None, None, SimpleNamespace(post=lambda m: None)
    monkeypatch.setenv("HEROKU_API_KEY", "hrku-test-token-0123456789")
    monkeypatch.setattr("agent.daemon.main.PlatformApi", new_api)
    config = AgentConfig(api=ApiConfig(url="http://127.0.0.1:9", poll_interval=30.0),
                         connections=(ConnectionConfig(space="acme-space", vpn="lab"),))
    try:
        assert daemon._start_poller(config) is True
        first = daemon._poller
        for _ in range(50):
            assert daemon._start_poller(config) is False
        assert daemon._poller is first and len(built) == 1
        assert daemon._start_poller(replace(config, api=replace(config.api, poll_interval=10.0))) is True
        assert daemon._poller is not first and len(built) == 2
    finally:
        daemon._poller.stop()
