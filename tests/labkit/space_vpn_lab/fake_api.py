"""A local stand-in for the Heroku Platform API's vpn-connection endpoints, over real HTTP.

It speaks the documented JSON (ETag/304, RateLimit-Remaining, error bodies) and has knobs
for the failures the agent must survive: outages, 429, slow answers, token rotation, PSK
and tunnel changes, a rate-limit pool that runs low (and answers 429 when empty). Lab and unit tests run it; it never logs the token or a PSK.
`start_fake_api` serves the lab's own connection (SPACE/VPN) to the agent under test,
`serve_space_side` a further one (Lab.add_vpn).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from space_vpn_lab import topology
from space_vpn_lab.netns import in_netns

if TYPE_CHECKING:
    from space_vpn_lab.lab import Lab
    from space_vpn_lab.space_side import SpaceSide

log = logging.getLogger(__name__)

#: The lab's Private Space and VPN connection, as the agent under test names them.
SPACE, VPN = "acme-space", "office"
ACCEPT = "application/vnd.heroku+json; version=3"
_POOL = 4500
_REFILL_PER_SECOND = 75 / 60
_ERROR_MESSAGES = {
    401: ("unauthorized", "Invalid credentials provided."),
    404: ("not_found", "Couldn't find that resource."),
    405: ("method_not_allowed", "This fake only answers GET."),
    406: ("not_acceptable", "Accept header must be application/vnd.heroku+json; version=3."),
    429: ("rate_limit", "Your account reached the API rate limit."),
}


def _now(at: float | None = None) -> str:
    moment = datetime.now(timezone.utc) if at is None else datetime.fromtimestamp(at, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Failure:
    count: int
    status: int
    error_id: str
    retry_after: float | None
    message: str | None = None
    only: tuple[str, str] | None = None  # (space, vpn): the other connections are answered
    body: bytes | None = None  # served as it is instead of Heroku's JSON error (e.g. a proxy's HTML)


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    answer: bool = True  # False: drop the connection without a response


class _State:
    """Everything the knobs change; every access holds `lock`."""

    def __init__(self, token: str) -> None:
        self.lock = threading.Lock()
        self.token = token
        self.connections: dict[tuple[str, str], dict] = {}
        self.spaces: set[str] = set()  # a space outlives its last connection
        self.hidden: set[tuple[str, str]] = set()  # answered 404 (see FakePlatformApi.hide)
        self.failure: _Failure | None = None
        self.delay = 0.0
        self.unreachable = False
        self.requests: list[tuple[str, str, int]] = []
        self.request_times: list[float] = []  # time.monotonic() of each entry of `requests`
        self.pool = float(_POOL)
        self.pool_at = time.monotonic()
        self.refill_per_second = _REFILL_PER_SECOND

    def take_rate_token(self) -> int | None:
        """The tokens left after this request's, or None when the pool is empty."""
        now = time.monotonic()
        self.pool = min(_POOL, self.pool + (now - self.pool_at) * self.refill_per_second)
        self.pool_at = now
        if self.pool < 1:
            return None
        self.pool -= 1
        return int(self.pool)


def _error(status: int, error_id: str | None = None, message: str | None = None) -> _Reply:
    default_id, default_message = _ERROR_MESSAGES.get(status, ("error", "Request failed."))
    body = {
        "id": error_id or default_id,
        "message": message or default_message,
        "url": "https://devcenter.heroku.com/articles/platform-api-reference",
    }
    return _Reply(status, json.dumps(body).encode())


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


def _json_reply(document: object, if_none_match: str | None) -> _Reply:
    body = json.dumps(document).encode()
    etag = _etag(body)
    if _etag_matches(if_none_match, etag):
        return _Reply(304, b"", (("ETag", etag),))
    return _Reply(200, body, (("ETag", etag),))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakePlatformApi/1"
    timeout = 30  # idle keep-alive connections must not pin threads for ever
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:
        # The default writes request lines to stderr; ours go through `log` in _finish.
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._finish(self.server.fake._answer(self))

    def _other_method(self) -> None:
        self._finish(self.server.fake._refuse(self, 405))

    do_POST = do_PATCH = do_DELETE = do_PUT = _other_method

    def _finish(self, reply: _Reply) -> None:
        log.debug("fake api: %s %s -> %s", self.command, self.path, reply.status)
        if not reply.answer:
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.status != 304 and not any(name == "Content-Type" for name, _ in reply.headers):
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], fake: "FakePlatformApi") -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        # A client that timed out and hung up is expected here, not worth a traceback.
        log.debug("fake api: connection from %s ended with an error", client_address)


class FakePlatformApi:
    """GET /spaces/{space}/vpn-connections[/{vpn}] on a local port, with failure knobs."""

    def __init__(
        self, token: str, *, host: str = "127.0.0.1", port: int = 0, netns: str | None = None
    ) -> None:
        self._state = _State(token)
        self._address = (host, port)
        self._netns = netns
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> "FakePlatformApi":
        if self._netns:
            # The listening socket keeps the namespace it was created in.
            with in_netns(self._netns):
                self._server = _Server(self._address, self)
        else:
            self._server = _Server(self._address, self)
        self._stopping.clear()
        # A short poll interval keeps stop() (and so every test teardown) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-platform-api", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in set_delay
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> "FakePlatformApi":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("fake API not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- state ---------------------------------------------------------------------------

    def add_connection(
        self,
        space: str,
        vpn: str,
        *,
        public_ip: str,
        routable_cidrs: list[str],
        space_cidr_block: str,
        ike_version: int,
        tunnel_ips: list[str],
        psks: list[str],
        status: str = "active",
    ) -> dict:
        """Create (or replace) a connection and return its JSON body."""
        now = _now()
        tunnels = [
            {"ip": ip, "customer_ip": public_ip, "pre_shared_key": psk, "status": "UP",
             "status_message": "", "last_status_change": now}
            for ip, psk in zip(tunnel_ips, psks, strict=True)
        ]
        body = {
            "id": str(100_000_000_000 + secrets.randbelow(900_000_000_000)),
            "name": vpn,
            "public_ip": public_ip,
            "routable_cidrs": list(routable_cidrs),
            "space_cidr_block": space_cidr_block,
            "ike_version": ike_version,
            "status": status,
            "status_message": "",
            "tunnels": tunnels,
        }
        with self._state.lock:
            self._state.connections[(space, vpn)] = body
            self._state.spaces.add(space)
            return copy.deepcopy(body)

    def remove_connection(self, space: str, vpn: str) -> None:
        with self._state.lock:
            del self._state.connections[(space, vpn)]

    def connection(self, space: str, vpn: str) -> dict:
        """A copy of the current body, for assertions."""
        with self._state.lock:
            return copy.deepcopy(self._state.connections[(space, vpn)])

    def _tunnel(self, space: str, vpn: str, n: int) -> dict:
        if n not in (1, 2):
            raise ValueError(f"tunnel number must be 1 or 2, got {n!r}")
        return self._state.connections[(space, vpn)]["tunnels"][n - 1]

    def set_tunnel_status(self, space: str, vpn: str, n: int, status: str, message: str = "",
                          changed_at: float | None = None) -> None:
        """`changed_at` (unix s) stamps last_status_change; default now (AWS telemetry
        may report a change late, stamped when it happened)."""
        with self._state.lock:
            tunnel = self._tunnel(space, vpn, n)
            tunnel.update(status=status, status_message=message, last_status_change=_now(changed_at))

    def set_psk(self, space: str, vpn: str, n: int, psk: str) -> None:
        with self._state.lock:
            self._tunnel(space, vpn, n)["pre_shared_key"] = psk

    def set_tunnel_ip(self, space: str, vpn: str, n: int, ip: str) -> None:
        with self._state.lock:
            self._tunnel(space, vpn, n)["ip"] = ip

    def set_space_cidr_block(self, space: str, vpn: str, cidr: str) -> None:
        """Any text at all: a hostile or broken API may send what Heroku never would."""
        with self._state.lock:
            self._state.connections[(space, vpn)]["space_cidr_block"] = cidr

    def set_connection_status(self, space: str, vpn: str, status: str, message: str = "") -> None:
        """While not active (pending, provisioning, failed...) the body has no tunnels,
        as Heroku's has none before AWS made them; they come back with `active`."""
        with self._state.lock:
            self._state.connections[(space, vpn)].update(status=status, status_message=message)

    # -- the connection's life (each stage as Heroku plays it) ------------------------------

    def hide(self, space: str, vpn: str, hidden: bool = True) -> None:
        """404 for this connection, as right after a create (eventual consistency) or
        after a destroy; the body stays for `hide(..., False)`."""
        with self._state.lock:
            (self._state.hidden.add if hidden else self._state.hidden.discard)((space, vpn))

    def reorder_tunnels(self, space: str, vpn: str) -> None:
        """The same tunnels, listed the other way round."""
        with self._state.lock:
            self._state.connections[(space, vpn)]["tunnels"].reverse()

    def set_routable_cidrs(self, space: str, vpn: str, cidrs: list[str]) -> None:
        """`heroku spaces:vpn:update --cidrs`: both tunnels' selectors change at once."""
        with self._state.lock:
            self._state.connections[(space, vpn)]["routable_cidrs"] = list(cidrs)

    def recreate(self, space: str, vpn: str, *, psks: list[str], tunnel_ips: list[str] | None = None,
                 status: str = "pending") -> dict:
        """`spaces:vpn:destroy` then `spaces:vpn:connect`: a new id, new PSKs, maybe
        new tunnel IPs; `status` pending until `set_connection_status(..., "active")`."""
        with self._state.lock:
            old = copy.deepcopy(self._state.connections[(space, vpn)])
        ips = tunnel_ips or [t["ip"] for t in old["tunnels"]]
        return self.add_connection(space, vpn, public_ip=old["public_ip"], routable_cidrs=old["routable_cidrs"],
                                   space_cidr_block=old["space_cidr_block"], ike_version=old["ike_version"],
                                   tunnel_ips=ips, psks=psks, status=status)

    # -- failure knobs -------------------------------------------------------------------

    def fail_next(
        self,
        count: int,
        status: int = 503,
        error_id: str = "service_unavailable",
        retry_after: float | None = None,
        message: str | None = None,
        only: tuple[str, str] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Answer the next `count` requests with `status` before any other check; the
        error body's message is `message` (any text, newlines included) if given. With
        `only` (space, vpn), just that connection's requests fail and count down. With
        `body`, that is served instead, as it is (garbage: a proxy's HTML page, a cut-off
        JSON document), whatever the status."""
        with self._state.lock:
            self._state.failure = (_Failure(count, status, error_id, retry_after, message, only, body)
                                   if count else None)

    def set_token(self, token: str) -> None:
        with self._state.lock:
            self._state.token = token

    def set_delay(self, seconds: float) -> None:
        with self._state.lock:
            self._state.delay = seconds

    def set_rate_limit(self, remaining: int, *, refill_per_minute: float = 75.0) -> None:
        """Set the pool to `remaining` tokens; each request takes one, and it refills at
        `refill_per_minute` (0: it only goes down, as when other tools share the token)."""
        with self._state.lock:
            self._state.pool = float(min(_POOL, max(0, remaining)))
            self._state.pool_at = time.monotonic()
            self._state.refill_per_second = refill_per_minute / 60

    @property
    def rate_limit_remaining(self) -> int:
        with self._state.lock:
            return int(self._state.pool)

    def set_unreachable(self, unreachable: bool) -> None:
        with self._state.lock:
            self._state.unreachable = unreachable

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request seen; status 0 = dropped unanswered."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def request_times(self) -> list[float]:
        """When each request of `requests` was answered (time.monotonic()), to measure spacing."""
        with self._state.lock:
            return list(self._state.request_times)

    # -- request handling (handler threads) ----------------------------------------------

    def _refuse(self, handler: _Handler, status: int) -> _Reply:
        with self._state.lock:
            return self._record(handler, self._with_rate_limit(lambda: _error(status)))

    def _answer(self, handler: _Handler) -> _Reply:
        with self._state.lock:
            delay = self._state.delay
        if delay and self._stopping.wait(delay):
            return _Reply(0, answer=False)
        with self._state.lock:
            if self._state.unreachable:
                return self._record(handler, _Reply(0, answer=False))

            def reply() -> _Reply:
                return self._failure_reply(handler) or self._check(handler) or self._route(handler)

            return self._record(handler, self._with_rate_limit(reply))

    def _record(self, handler: _Handler, reply: _Reply) -> _Reply:
        self._state.requests.append((handler.command, handler.path, reply.status))
        self._state.request_times.append(time.monotonic())
        return reply

    def _with_rate_limit(self, answer: Callable[[], _Reply]) -> _Reply:
        """Every request costs a token; with none left Heroku answers 429 and nothing else."""
        remaining = self._state.take_rate_token()
        reply = answer() if remaining is not None else _error(429)
        reply.headers += (("RateLimit-Remaining", str(remaining or 0)),)
        return reply

    def _failure_reply(self, handler: _Handler) -> _Reply | None:
        failure = self._state.failure
        if failure is None or failure.count <= 0:
            return None
        if failure.only is not None and _connection_of(handler.path) != failure.only:
            return None
        failure.count -= 1
        if failure.body is not None:
            return _Reply(failure.status, failure.body, (("Content-Type", "text/html"),))
        reply = _error(failure.status, failure.error_id, failure.message or "Simulated failure.")
        if failure.retry_after is not None:
            reply.headers += (("Retry-After", f"{failure.retry_after:g}"),)
        return reply

    def _check(self, handler: _Handler) -> _Reply | None:
        accepted = [a.strip() for a in handler.headers.get("Accept", "").split(",")]
        if ACCEPT not in accepted:
            return _error(406)
        expected = f"Bearer {self._state.token}".encode()
        given = handler.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401)
        return None

    def _route(self, handler: _Handler) -> _Reply:
        parts = _path_parts(handler.path)
        if parts is None:
            return _error(404)
        space = parts[2]
        in_space = {v: body for (s, v), body in self._state.connections.items() if s == space}
        if space not in self._state.spaces:
            return _error(404, message="Couldn't find that space.")
        if len(parts) == 4:
            shown = [_as_served(body) for name, body in in_space.items() if (space, name) not in self._state.hidden]
            return _json_reply(shown, handler.headers.get("If-None-Match"))
        wanted = parts[4]
        for name, body in in_space.items():
            if wanted in (name, body["id"]) and (space, name) not in self._state.hidden:
                return _json_reply(_as_served(body), handler.headers.get("If-None-Match"))
        return _error(404, message="Couldn't find that VPN connection.")


def _path_parts(path: str) -> list[str] | None:
    """["", "spaces", space, "vpn-connections"(, vpn)], or None for any other path."""
    parts = [unquote(p) for p in urlsplit(path).path.split("/")]
    if len(parts) not in (4, 5) or parts[:2] != ["", "spaces"] or parts[3] != "vpn-connections":
        return None
    return parts


def _connection_of(path: str) -> tuple[str, str] | None:
    """(space, vpn) of a request for one connection (by name as asked), else None."""
    parts = _path_parts(path)
    return (parts[2], parts[4]) if parts is not None and len(parts) == 5 else None


def _as_served(body: dict) -> dict:
    """A connection that is not active has no tunnels yet (or any more)."""
    return body if body["status"] == "active" else {**body, "tunnels": []}


def start_fake_api(lab: Lab, token: str, netns: str | None = None) -> FakePlatformApi:
    """The fake Platform API, listening on 127.0.0.1 inside the customer namespace (or
    `netns`: an HA lab gateway's) and serving SPACE/VPN with the lab's tunnel endpoints,
    PSKs and routable CIDRs."""
    api = FakePlatformApi(token, netns=netns or lab.topology.cust_ns).start()
    api.add_connection(
        SPACE, VPN,
        public_ip=topology.CUSTOMER_PUBLIC_IP,
        routable_cidrs=list(lab.routable_cidrs),
        space_cidr_block=topology.SPACE_CIDR,
        ike_version=lab.ike_version,
        tunnel_ips=list(lab.tunnel_ips),
        psks=list(lab.psks),
    )
    return api


def serve_space_side(api: FakePlatformApi, space: str, vpn: str, side: SpaceSide) -> dict:
    """Serve a further lab VPN (Lab.add_vpn) as space/vpn: its endpoints, PSKs and CIDRs."""
    return api.add_connection(
        space, vpn,
        public_ip=side.customer_ip,
        routable_cidrs=list(side.remote_ts),
        space_cidr_block=side.local_ts,
        ike_version=side.ike_version,
        tunnel_ips=[t.ip for t in side.tunnels],
        psks=[t.psk for t in side.tunnels],
    )
