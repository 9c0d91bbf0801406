"""The Platform API adapter against hostile servers over real loopback HTTP: a body that
never ends, one that trickles, error texts carrying newlines and terminal escapes. Each
request ends within its timeout and its size cap, with an error that says why."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler

import pytest

from agent.adapters.heroku import MAX_ANSWER_BYTES, ApiHttpError, ApiPayloadError, ApiUnavailable, PlatformApi
from agent.core.model import Secret
from tests.unit.test_controller import vpn_json

TOKEN = "hrku-test-token-0123456789"
PATH_SPACE, PATH_VPN = "acme-space", "office"


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[BaseHTTPRequestHandler], None]], str]]:
    """serve(respond) -> base url of a loopback server answering every GET with respond(handler)."""
    servers = []

    def start(respond: Callable[[BaseHTTPRequestHandler], None]) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: what these tests want

            def log_message(self, *args) -> None:
                pass

        server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def api(url: str, **options) -> PlatformApi:
    return PlatformApi(url, Secret(TOKEN), **({"attempts": 1, "timeout": 1.0, "sleep": lambda s: None} | options))


def get(url: str, **options):
    client = api(url, **options)
    try:
        return client.get_vpn_connection(PATH_SPACE, PATH_VPN)
    finally:
        client.close()


def huge_body(declare_length: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    """200 MB of a JSON string, as fast as the socket takes it."""
    size, block = 200 * 1024 * 1024, b"x" * 65536

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if declare_length:
            handler.send_header("Content-Length", str(size))
        handler.end_headers()
        handler.wfile.write(b'{"status": "active", "junk": "')
        for _ in range(size // len(block)):
            handler.wfile.write(block)

    return respond


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "no-length"])
def test_a_200_mb_answer_is_refused_after_at_most_the_cap(serve, declare_length):
    url = serve(huge_body(declare_length))
    started = time.monotonic()
    with pytest.raises(ApiPayloadError, match=f"larger than {MAX_ANSWER_BYTES} bytes|"
                                              f"209715200 bytes refused") as caught:
        get(url, timeout=10.0)
    assert time.monotonic() - started < 5  # it stopped reading: 200 MB would take longer
    assert caught.value.kind == "payload"
    assert f"space {PATH_SPACE} vpn {PATH_VPN}" in str(caught.value)


def test_a_trickling_answer_ends_at_the_request_timeout(serve):
    """A byte every 0.1 s never trips httpx's per-read timeout: the total deadline does."""
    body = json.dumps(vpn_json()).encode()

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.1)

    url = serve(respond)
    started = time.monotonic()
    with pytest.raises(ApiUnavailable, match="answer still incomplete after 1 s .*api.timeout bounds the whole"):
        get(url, timeout=1.0)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5  # the deadline, plus at most one read


def test_a_slow_but_complete_answer_within_the_timeout_is_used(serve):
    body = json.dumps(vpn_json()).encode()

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        half = len(body) // 2
        handler.wfile.write(body[:half])
        handler.wfile.flush()
        time.sleep(0.2)
        handler.wfile.write(body[half:])

    result = get(serve(respond), timeout=2.0)
    assert result.answer.connection.name == "office"


def error_answer(status: int, body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


HOSTILE = "bad request\nWATCHDOG_USEC=1\nMAINPID=1\r\x1b]0;owned\x07\x1b[2J\u202egnp.exe"


def test_an_error_message_with_newlines_and_escapes_becomes_one_printable_line(serve):
    body = json.dumps({"id": "bad_request", "message": HOSTILE}).encode()
    with pytest.raises(ApiHttpError) as caught:
        get(serve(error_answer(400, body)))
    message = str(caught.value)
    assert message.isprintable() and "\n" not in message and "\x1b" not in message
    assert "bad request WATCHDOG_USEC=1 MAINPID=1" in message  # still readable, on one line


def test_a_huge_error_page_is_cut_and_echoes_no_token(serve):
    # The token sits right where a naive cut at 200 characters would split it.
    page = ("x" * 190 + TOKEN + "\n" + "y" * (5 * 1024 * 1024)).encode()
    with pytest.raises(ApiUnavailable) as caught:
        get(serve(error_answer(502, page)))
    message = str(caught.value)
    assert TOKEN[:6] not in message and "<redacted>"[:5] in message
    assert len(message) < 400 and message.isprintable()
