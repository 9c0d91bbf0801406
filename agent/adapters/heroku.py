"""Reads one vpn-connection from the Heroku Platform API (httpx + tenacity).

Retries only what may heal by itself (network errors, timeouts, 5xx, 429 honouring
Retry-After); a refused token or a missing connection is reported at once. Library errors
are translated into the small PlatformApiError tree; the token never appears in one, and
its message is one printable line (it reaches logs, sd_notify and terminals). Answers are
streamed: at most MAX_ANSWER_BYTES, and all of it within the request's timeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx
import tenacity

from agent import __version__
from agent.core.addresses import is_loopback_host
from agent.core.model import Secret, VpnAnswer
from agent.core.payload import PayloadError, parse_vpn_answer
from agent.core.text import one_line

log = logging.getLogger(__name__)

ACCEPT = "application/vnd.heroku+json; version=3"
DEFAULT_USER_AGENT = f"space-vpn-agent/{__version__}"
_MAX_ERROR_TEXT = 200  # of an error answer's body, in an error message
MAX_ERROR_MESSAGE = 1000  # characters: a payload error lists every problem, each shortened
MAX_ANSWER_BYTES = 1 << 20  # a vpn-connection is about 2 KiB: a larger body is not one
_MAX_ERROR_BODY = 64 << 10  # bytes read of an error answer: only its first words are shown
_MAX_COUNT_DIGITS = 9  # a rate-limit count longer than this is not one
_MAX_DATE_TEXT = 64  # "Sun, 06 Nov 1994 08:49:37 GMT" is 29


class PlatformApiError(Exception):
    """Any failure to get a usable answer; `kind` is a short label for metrics."""

    default_kind = "error"
    # What the failed answer said of the rate-limit pool (a 429 without the header: 0);
    # None when no answer came back.
    rate_limit_remaining: int | None = None

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(one_line(message, MAX_ERROR_MESSAGE))
        self.status = status
        self.kind = kind or self.default_kind


class ApiAuthError(PlatformApiError):
    """401/403: the token is missing, invalid, expired or lacks access."""

    default_kind = "auth"


class ApiNotFound(PlatformApiError):
    """404: no such space or vpn (also briefly right after a create)."""

    default_kind = "not_found"


class ApiUnavailable(PlatformApiError):
    """Unreachable, timed out, 5xx or rate limited, still so after the retries."""

    default_kind = "unavailable"

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message, status=status, kind=kind)
        self.retry_after = retry_after


class ApiPayloadError(PlatformApiError):
    """The answer was not JSON or not a valid vpn-connection."""

    default_kind = "payload"


class ApiHttpError(PlatformApiError):
    """Any other unexpected HTTP status."""

    default_kind = "http"


#: Every `kind` a failure can carry (metrics export each at 0 before it first happens).
API_ERROR_KINDS = ("auth", "not_found", "unavailable", "rate_limited", "payload", "http", "error")


@dataclass(frozen=True)
class FetchResult:
    """One GET: `answer` and `raw` are None on 304 Not Modified."""

    answer: VpnAnswer | None
    raw: dict | None = field(repr=False)  # the body as received, PSKs in clear
    etag: str | None
    rate_limit_remaining: int | None
    # Heroku's clock (its Date header, unix s) minus our monotonic clock as the answer
    # arrived: Heroku's timestamps are compared with our SAs on it, not on our wall clock,
    # which NTP (or a person) may step. None without a usable Date header.
    heroku_clock: float | None = None


def _check_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise ValueError(f"invalid Platform API url {url}: {e}") from e
    if parsed.scheme == "https" and parsed.host:
        return parsed
    if parsed.scheme == "http" and is_loopback_host(parsed.host):
        return parsed
    raise ValueError(f"refusing Platform API url {url}: use https (plain http only to loopback)")


def _segment(name: str) -> str:
    if name in ("", ".", ".."):
        raise ValueError(f"invalid space or vpn name {name!r}")
    return quote(name, safe="")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # the HTTP-date form is not used by this API: fall back to backoff


def _rate_limit_remaining(response: httpx.Response) -> int | None:
    """`RateLimit-Remaining`, bounded: a value that is not a count is ignored."""
    value = response.headers.get("RateLimit-Remaining", "").strip()
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_COUNT_DIGITS:
        return None
    return int(value)


def _error_detail(body: bytes, scrub: Callable[[str], str]) -> str:
    """The error answer's `id: message`, else its text, as one short printable line;
    `scrub` runs on the whole text first, so a cut never leaves part of a secret."""
    try:
        data = json.loads(body)
        detail = f"{data.get('id', '?')}: {data.get('message', '')}"
    except (ValueError, AttributeError):
        detail = body.decode("utf-8", "replace")
    return one_line(scrub(detail), _MAX_ERROR_TEXT) or "(no body)"


def server_time(date: str | None) -> float | None:
    """An HTTP Date header (IMF-fixdate, whole seconds) as unix time at the middle of its
    second; None when absent, overlong, malformed or without a time zone."""
    if not date or len(date) > _MAX_DATE_TEXT:
        return None
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.timestamp() + 0.5
    except (OverflowError, ValueError, OSError):
        return None


def _declared_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _wait_strategy(max_backoff: float) -> Callable[[tenacity.RetryCallState], float]:
    backoff = tenacity.wait_exponential_jitter(max=max_backoff, jitter=1)

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        hint = getattr(error, "retry_after", None)
        # The server knows when its limit refills; still never wait longer than configured.
        return min(hint, max_backoff) if hint is not None else backoff(state)

    return wait


def retry_policy(
    *, attempts: int, max_backoff: float, sleep: Callable[[float], None]
) -> tenacity.Retrying:
    """The adapter's one retry policy: ApiUnavailable is retried, everything else is final."""

    def log_retry(state: tenacity.RetryCallState) -> None:
        # The error message already names the space and vpn.
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("Platform API attempt %d/%d failed: %s; retrying in %.1fs",
                    state.attempt_number, attempts, error, wait)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ApiUnavailable),
        stop=tenacity.stop_after_attempt(attempts),
        wait=_wait_strategy(max_backoff),
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )


class PlatformApi:
    """GETs vpn-connections with ETag revalidation and bounded retries."""

    def __init__(
        self,
        url: str,
        token: Secret,
        *,
        timeout: float = 10.0,
        attempts: int = 4,
        max_backoff: float = 30.0,
        user_agent: str = DEFAULT_USER_AGENT,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`timeout` (s) bounds each request as a whole, from connecting to the answer's
        last byte (httpx's own timeouts are per read: a server trickling bytes would hold
        the poller for ever); checked as bytes arrive, so a request ends at most one read
        timeout past it."""
        parsed = _check_url(url)
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self._token = token
        self._timeout = timeout
        self._clock = clock
        self._retrying = retry_policy(attempts=attempts, max_backoff=max_backoff, sleep=sleep)
        # The token is added per request, not as a client default, so it lives in one place.
        self._client = httpx.Client(
            base_url=url,
            timeout=timeout,
            transport=transport,
            headers={"Accept": ACCEPT, "User-Agent": user_agent},
            follow_redirects=False,
            # Proxy settings from the environment serve gateways behind a corporate proxy;
            # a loopback fake must never be sent through one.
            trust_env=not is_loopback_host(parsed.host),
        )

    def __repr__(self) -> str:
        return f"PlatformApi({str(self._client.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    def get_vpn_connection(self, space: str, vpn: str, etag: str | None = None) -> FetchResult:
        """The answer, or answer=None when `etag` is still current (304)."""
        path = f"/spaces/{_segment(space)}/vpn-connections/{_segment(vpn)}"
        what = f"space {space} vpn {vpn}"
        return self._retrying(self._get_once, path, what, etag)

    def _get_once(self, path: str, what: str, etag: str | None) -> FetchResult:
        headers = {"Authorization": f"Bearer {self._token.reveal()}"}
        if etag:
            headers["If-None-Match"] = etag
        deadline = self._clock() + self._timeout
        try:
            with self._client.stream("GET", path, headers=headers) as response:
                received = self._clock()
                body = self._read_body(response, what, deadline)
        except httpx.TimeoutException as e:
            raise ApiUnavailable(f"{what}: timed out ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise ApiUnavailable(f"{what}: cannot reach the API ({type(e).__name__}: {e})") from e
        except httpx.HTTPError as e:
            raise ApiHttpError(f"{what}: request failed ({type(e).__name__}: {e})") from e
        return self._result(response, body, what, etag, received)

    def _read_body(self, response: httpx.Response, what: str, deadline: float) -> bytes:
        """The body (decoded, so a compressed bomb counts at its real size), refused past
        MAX_ANSWER_BYTES or the deadline; of an error answer only the first part."""
        answer = response.status_code == 200
        limit = MAX_ANSWER_BYTES if answer else _MAX_ERROR_BODY
        declared = _declared_length(response)
        if answer and declared is not None and declared > limit:
            raise ApiPayloadError(f"{what}: answer of {declared} bytes refused (a vpn-connection is a few KiB; "
                                  f"at most {limit} bytes are read)", status=200)
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            if self._clock() > deadline:
                raise ApiUnavailable(f"{what}: answer still incomplete after {self._timeout:g} s "
                                     f"({size} bytes so far); api.timeout bounds the whole request")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if not answer:
                    break  # enough of an error page to show its first words
                raise ApiPayloadError(f"{what}: answer refused: larger than {limit} bytes "
                                      f"(a vpn-connection is a few KiB)", status=200)
        return b"".join(chunks)[:limit]

    def _result(self, response: httpx.Response, body: bytes, what: str, etag: str | None,
                received: float) -> FetchResult:
        status = response.status_code
        remaining = _rate_limit_remaining(response)
        new_etag = response.headers.get("ETag")
        heroku_time = server_time(response.headers.get("Date"))
        heroku_clock = heroku_time - received if heroku_time is not None else None
        if status == 304:
            return FetchResult(None, None, new_etag or etag, remaining, heroku_clock)
        if status == 200:
            raw, answer = self._parse(body, what)
            return FetchResult(answer, raw, new_etag, remaining, heroku_clock)
        error = self._status_error(response, body, what)
        # A 429 means the pool is empty even where the header is missing.
        error.rate_limit_remaining = 0 if status == 429 and remaining is None else remaining
        raise error

    def _parse(self, body: bytes, what: str) -> tuple[dict, VpnAnswer]:
        try:
            raw = json.loads(body)
        except ValueError as e:
            raise ApiPayloadError(f"{what}: answer is not JSON ({e})") from e
        try:
            return raw, parse_vpn_answer(raw)
        except PayloadError as e:
            raise ApiPayloadError(f"{what}: {e}") from e

    def _status_error(self, response: httpx.Response, body: bytes, what: str) -> PlatformApiError:
        status = response.status_code
        message = f"{what}: HTTP {status} ({_error_detail(body, self._scrub)})"
        if status in (401, 403):
            return ApiAuthError(message, status=status)
        if status == 404:
            return ApiNotFound(message, status=status)
        if status == 429:
            return ApiUnavailable(message, status=status, kind="rate_limited",
                                  retry_after=_retry_after(response))
        if status >= 500:
            return ApiUnavailable(message, status=status, retry_after=_retry_after(response))
        return ApiHttpError(message, status=status)

    def _scrub(self, text: str) -> str:
        # An error page that echoes the request must not carry the token into our logs.
        token = self._token.reveal()
        return text.replace(token, "<redacted>") if token else text
