"""The Platform API adapter against the fake API over real HTTP: ETag/304, which errors are
retried and how long it waits, the error tree, and that the token and PSKs never leak into
messages, logs or reprs."""

from __future__ import annotations

import logging

import httpx
import pytest

from agent.adapters.heroku import (
    ApiAuthError,
    ApiHttpError,
    ApiNotFound,
    ApiPayloadError,
    ApiUnavailable,
    FetchResult,
    PlatformApi,
    PlatformApiError,
)
from agent.core.model import Secret, TunnelApiStatus
from space_vpn_lab.fake_api import FakePlatformApi
from tests.unit.test_fake_api import PSKS, TOKEN, add_office

PATH = "/spaces/my-space/vpn-connections/office"


class Sleeps(list):
    """Stands in for time.sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fake():
    with FakePlatformApi(TOKEN) as api:
        add_office(api)
        yield api


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def make_api(fake, sleeps):
    made = []

    def make(**kwargs) -> PlatformApi:
        options = {"sleep": sleeps, "timeout": 2.0} | kwargs
        api = PlatformApi(fake.url, Secret(TOKEN), **options)
        made.append(api)
        return api

    yield make
    for api in made:
        api.close()


def test_200_with_etag_then_304(fake, make_api):
    api = make_api()
    first = api.get_vpn_connection("my-space", "office")
    assert isinstance(first, FetchResult)
    assert first.answer.connection is not None
    assert first.answer.connection.tunnel(1).psk.reveal() == PSKS[0]
    assert first.answer.connection.tunnel(1).status is TunnelApiStatus.UP
    assert first.raw == fake.connection("my-space", "office")
    assert first.etag
    assert 0 < first.rate_limit_remaining < 4500

    second = api.get_vpn_connection("my-space", "office", etag=first.etag)
    assert second.answer is None and second.raw is None
    assert second.etag == first.etag
    assert second.rate_limit_remaining < first.rate_limit_remaining
    assert [s for _, _, s in fake.requests] == [200, 304]


def test_changed_connection_gives_200_despite_etag(fake, make_api):
    api = make_api()
    first = api.get_vpn_connection("my-space", "office")
    fake.set_tunnel_status("my-space", "office", 2, "DOWN", "maintenance")
    second = api.get_vpn_connection("my-space", "office", etag=first.etag)
    assert second.answer.connection.tunnel(2).status is TunnelApiStatus.DOWN
    assert second.etag != first.etag


def test_vpn_id_works_and_names_are_quoted(fake, make_api):
    api = make_api()
    conn_id = fake.connection("my-space", "office")["id"]
    assert api.get_vpn_connection("my-space", conn_id).answer.connection.name == "office"
    with pytest.raises(ApiNotFound):
        api.get_vpn_connection("my space/../x", "office")
    assert fake.requests[-1][1] == "/spaces/my%20space%2F..%2Fx/vpn-connections/office"


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_unusable_names_are_refused(make_api, name):
    with pytest.raises(ValueError):
        make_api().get_vpn_connection(name, "office")


def test_401_is_auth_error_without_retry(fake, make_api, sleeps):
    fake.set_token("rotated-elsewhere")
    with pytest.raises(ApiAuthError) as info:
        make_api().get_vpn_connection("my-space", "office")
    assert info.value.kind == "auth"
    assert info.value.status == 401
    assert "my-space" in str(info.value) and "office" in str(info.value)
    assert "401" in str(info.value) and "unauthorized" in str(info.value)
    assert len(fake.requests) == 1
    assert sleeps == []


def test_403_is_auth_error(fake, make_api):
    fake.fail_next(1, status=403, error_id="forbidden")
    with pytest.raises(ApiAuthError, match="forbidden"):
        make_api().get_vpn_connection("my-space", "office")
    assert len(fake.requests) == 1


def test_404_no_retry(fake, make_api, sleeps):
    with pytest.raises(ApiNotFound) as info:
        make_api().get_vpn_connection("my-space", "nope")
    assert info.value.kind == "not_found"
    assert "not_found" in str(info.value) and "nope" in str(info.value)
    assert len(fake.requests) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [400, 402, 409, 410, 422])
def test_other_4xx_is_http_error_without_retry(fake, make_api, status):
    fake.fail_next(1, status=status, error_id="some_error")
    with pytest.raises(ApiHttpError) as info:
        make_api().get_vpn_connection("my-space", "office")
    assert info.value.kind == "http"
    assert info.value.status == status
    assert len(fake.requests) == 1


def test_503_twice_then_200_succeeds(fake, make_api, sleeps, caplog):
    fake.fail_next(2, status=503)
    with caplog.at_level(logging.WARNING, logger="agent.adapters.heroku"):
        result = make_api(max_backoff=30).get_vpn_connection("my-space", "office")
    assert result.answer.connection is not None
    assert [s for _, _, s in fake.requests] == [503, 503, 200]
    # Exponential with up to 1 s of jitter: ~1 s then ~2 s.
    assert len(sleeps) == 2
    assert 1 <= sleeps[0] <= 2 and 2 <= sleeps[1] <= 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("my-space" in w and "office" in w and "503" in w for w in warnings)


def test_backoff_is_capped(fake, make_api, sleeps):
    fake.fail_next(6)
    with pytest.raises(ApiUnavailable) as info:
        make_api(attempts=6, max_backoff=2.5).get_vpn_connection("my-space", "office")
    assert info.value.kind == "unavailable" and info.value.status == 503
    assert len(sleeps) == 5
    assert all(s <= 2.5 for s in sleeps)
    assert sleeps[-1] == 2.5


def test_429_retry_after_is_honoured(fake, make_api, sleeps):
    fake.fail_next(1, status=429, error_id="rate_limit", retry_after=7)
    result = make_api().get_vpn_connection("my-space", "office")
    assert result.answer.connection is not None
    assert sleeps == [7]


def test_429_retry_after_is_capped_and_gives_rate_limited(fake, make_api, sleeps):
    fake.fail_next(10, status=429, error_id="rate_limit", retry_after=600)
    with pytest.raises(ApiUnavailable) as info:
        make_api(attempts=3, max_backoff=30).get_vpn_connection("my-space", "office")
    assert info.value.kind == "rate_limited"
    assert info.value.status == 429
    assert "rate_limit" in str(info.value)
    assert sleeps == [30, 30]
    assert len(fake.requests) == 3


def test_timeouts_give_unavailable_after_attempts(fake, make_api, sleeps):
    fake.set_delay(1.0)
    with pytest.raises(ApiUnavailable) as info:
        make_api(timeout=0.1, attempts=3).get_vpn_connection("my-space", "office")
    assert info.value.kind == "unavailable"
    assert "timed out" in str(info.value)
    assert len(sleeps) == 2
    assert isinstance(info.value.__cause__, Exception)


def test_dropped_connections_give_unavailable(fake, make_api, sleeps):
    fake.set_unreachable(True)
    with pytest.raises(ApiUnavailable, match="cannot reach"):
        make_api(attempts=2).get_vpn_connection("my-space", "office")
    assert [s for _, _, s in fake.requests] == [0, 0]


def test_connection_refused_gives_unavailable(sleeps):
    with FakePlatformApi(TOKEN) as gone:
        url = gone.url
    api = PlatformApi(url, Secret(TOKEN), attempts=2, sleep=sleeps)
    try:
        with pytest.raises(ApiUnavailable, match="cannot reach"):
            api.get_vpn_connection("my-space", "office")
    finally:
        api.close()
    assert len(sleeps) == 1


def test_invalid_payload_is_payload_error(fake, make_api, sleeps):
    fake.add_connection(
        "my-space", "bad", public_ip="203.0.113.10", routable_cidrs=["8.8.0.0/16"],
        space_cidr_block="10.0.0.0/16", ike_version=3,
        tunnel_ips=["198.51.100.1", "abc"], psks=PSKS,
    )
    with pytest.raises(ApiPayloadError) as info:
        make_api().get_vpn_connection("my-space", "bad")
    message = str(info.value)
    assert info.value.kind == "payload"
    assert "routable_cidrs[0]: 8.8.0.0/16 is not inside RFC 1918" in message
    assert "ike_version: must be 1 or 2, got 3" in message
    assert "tunnels[1].ip: 'abc' is not an IP address" in message
    assert all(psk not in message for psk in PSKS)
    assert sleeps == []


@pytest.mark.parametrize("url", ["http://api.heroku.com", "http://10.0.0.1:8080",
                                 "ftp://127.0.0.1", "http://example.com",
                                 "https://", "http://127.0.0.1:notaport"])
def test_plain_http_to_non_loopback_is_refused(url):
    with pytest.raises(ValueError) as info:
        PlatformApi(url, Secret(TOKEN))
    assert url in str(info.value)


@pytest.mark.parametrize("url", ["https://api.heroku.com", "http://127.0.0.1:5000",
                                 "http://127.1.2.3", "http://localhost:80", "http://[::1]:8080"])
def test_https_and_loopback_are_accepted(url):
    PlatformApi(url, Secret(TOKEN)).close()


def test_exception_tree():
    for cls in (ApiAuthError, ApiNotFound, ApiUnavailable, ApiPayloadError, ApiHttpError):
        assert issubclass(cls, PlatformApiError)


def test_request_headers(fake, make_api):
    # The fake answers 406 without the exact Accept and 401 without the Bearer token, so a
    # 200 proves both were sent.
    assert make_api(user_agent="probe/1").get_vpn_connection("my-space", "office").answer.connection


def test_no_secret_in_messages_logs_or_reprs(fake, make_api, sleeps, caplog):
    """Every failure path, with every logger at DEBUG (httpx and httpcore included)."""
    caplog.set_level(logging.DEBUG)
    api = make_api(attempts=2, timeout=0.2)
    seen: list[str] = [repr(api)]

    def attempt(space: str = "my-space", vpn: str = "office") -> None:
        try:
            result = api.get_vpn_connection(space, vpn)
            seen.append(repr(result))
        except PlatformApiError as e:
            seen.extend([str(e), repr(e), str(e.__cause__), repr(e.__cause__)])

    attempt()
    fake.fail_next(1, status=500)
    attempt()
    fake.fail_next(2, status=429, error_id="rate_limit", retry_after=1)
    attempt()
    attempt(vpn="nope")
    fake.add_connection("my-space", "bad", public_ip="x", routable_cidrs=[],
                        space_cidr_block="10.0.0.0/16", ike_version=1,
                        tunnel_ips=["192.0.2.4", "y"], psks=PSKS)
    attempt(vpn="bad")
    fake.set_delay(1.0)
    attempt()
    fake.set_delay(0)
    fake.set_unreachable(True)
    attempt()
    fake.set_unreachable(False)
    fake.set_token("other")
    attempt()

    seen.extend(r.getMessage() for r in caplog.records)
    seen.append(caplog.text)
    seen.append(repr(fake.requests))
    text = "\n".join(seen)
    assert "HTTP" in text  # the checks below looked at real content
    for secret in [TOKEN, *PSKS]:
        assert secret not in text


# -- the rate-limit budget -----------------------------------------------------------

def test_an_empty_pool_gives_rate_limited_with_nothing_left(fake, make_api, sleeps):
    fake.set_rate_limit(0, refill_per_minute=0)
    with pytest.raises(ApiUnavailable) as info:
        make_api(attempts=2).get_vpn_connection("my-space", "office")
    assert info.value.kind == "rate_limited" and info.value.rate_limit_remaining == 0


def test_a_refused_answer_still_reports_the_budget(fake, make_api):
    fake.set_rate_limit(300, refill_per_minute=0)
    with pytest.raises(ApiNotFound) as info:
        make_api().get_vpn_connection("my-space", "nothing")
    assert info.value.rate_limit_remaining == 299


def test_a_429_without_the_header_counts_as_an_empty_pool(sleeps):
    transport = httpx.MockTransport(lambda request: httpx.Response(429, json={"id": "rate_limit", "message": ""}))
    api = PlatformApi("https://api.example.test", Secret(TOKEN), transport=transport, sleep=sleeps, attempts=1)
    with pytest.raises(ApiUnavailable) as info:
        api.get_vpn_connection("my-space", "office")
    assert info.value.rate_limit_remaining == 0


def test_no_answer_says_nothing_of_the_budget(fake, make_api):
    fake.set_unreachable(True)
    with pytest.raises(ApiUnavailable) as info:
        make_api(attempts=1).get_vpn_connection("my-space", "office")
    assert info.value.rate_limit_remaining is None


@pytest.mark.parametrize("header, expected", [
    ("212", 212), (" 7 ", 7), ("0", 0), ("-3", None), ("12.5", None), ("lots", None), ("", None),
    ("9" * 40, None), ("٣".encode(), None),  # an Arabic-Indic digit: isdigit(), but no count
])
def test_rate_limit_header_is_bounded(fake, header, expected, sleeps):
    body = fake.connection("my-space", "office")
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, json=body, headers={"RateLimit-Remaining": header, "ETag": '"e"'}))
    api = PlatformApi("https://api.example.test", Secret(TOKEN), transport=transport, sleep=sleeps)
    assert api.get_vpn_connection("my-space", "office").rate_limit_remaining == expected


def test_each_answer_carries_herokus_clock_against_ours(fake, make_api):
    """The Date header, as an offset to the adapter's monotonic clock: Heroku's DOWN
    timestamps are compared on it, whatever our wall clock does."""
    import time

    api = make_api(clock=lambda: 1000.0)
    first = api.get_vpn_connection("my-space", "office")
    second = api.get_vpn_connection("my-space", "office", etag=first.etag)  # a 304 has a Date too
    for result in (first, second):
        assert result.heroku_clock is not None
        assert abs(result.heroku_clock + 1000.0 - time.time()) < 2.0


@pytest.mark.parametrize("date, expected", [
    ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777.5),  # RFC 9110's example, mid-second
    ("Sun, 06 Nov 1994 10:49:37 +0200", 784111777.5),
    (None, None), ("", None), ("yesterday", None),
    ("Sun, 06 Nov 1994 08:49:37", None),  # no zone: whose clock?
    ("Sun, 06 Nov 1994 08:49:37 GMT" + " " * 64, None),  # overlong
])
def test_server_time(date, expected):
    from agent.adapters.heroku import server_time

    assert server_time(date) == expected


def test_server_time_takes_any_text_without_raising():
    from email.utils import formatdate

    from hypothesis import given
    from hypothesis import strategies as st

    from agent.adapters.heroku import server_time

    @given(st.text(max_size=80))
    def anything(text):
        value = server_time(text)
        assert value is None or isinstance(value, float)

    @given(st.integers(0, 4_000_000_000))
    def round_trip(unix):
        assert server_time(formatdate(unix, usegmt=True)) == unix + 0.5

    anything()
    round_trip()
