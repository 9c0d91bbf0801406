"""The control protocol (line JSON with a size cap) and the daemon's control server
over a real unix socket: answers, errors, the reload inbox and the socket's mode."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from agent.adapters.bounded_server import Limits
from agent.control import protocol
from agent.control.server import LIMITS, ControlServer, peer_of
from agent.core.snapshot import Snapshot
from agent.daemon.messages import ControlRequest

SNAPSHOT = Snapshot(agent_version="1.2.0", started_at=1700000000.0, generated_at=1700000060.0,
                    charon_reachable=True, charon_version="5.9.8", ready=True)


# -- protocol -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "message, wire",
    [
        ({"id": 1, "command": "status", "args": {}}, b'{"args":{},"command":"status","id":1}\n'),
        ({"id": 7, "ok": False, "error": "unknown command"}, b'{"error":"unknown command","id":7,"ok":false}\n'),
        ({"id": 2, "ok": True, "result": {"space": "acme-space", "cidrs": ["10.0.0.0/16"]}},
         b'{"id":2,"ok":true,"result":{"cidrs":["10.0.0.0/16"],"space":"acme-space"}}\n'),
    ],
    ids=["request", "error-answer", "nested-result"],
)
def test_encode_is_one_compact_sorted_line_and_decodes_back(message, wire):
    assert protocol.encode(message) == wire
    assert protocol.decode(wire) == message
    assert protocol.read_message(io.BytesIO(wire + b'{"id":3}\n')) == message


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'"status"\n', "must be a JSON object"),
    ],
)
def test_decode_refuses_anything_but_a_json_object(line, fragment):
    with pytest.raises(protocol.ProtocolError, match=fragment):
        protocol.decode(line)


def test_encode_refuses_an_oversized_message():
    big = {"id": 1, "result": "x" * protocol.MAX_MESSAGE}
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.encode(big)


@pytest.mark.parametrize(
    "stream, fragment",
    [
        (b"", "connection closed"),
        (b'{"id":1}', "truncated"),
        (b"x" * (protocol.MAX_MESSAGE + 10) + b"\n", "larger than"),
    ],
    ids=["empty", "no-newline", "oversized"],
)
def test_read_message_refuses_empty_truncated_and_oversized_input(stream, fragment):
    with pytest.raises(protocol.ProtocolError, match=fragment):
        protocol.read_message(io.BytesIO(stream))


# -- server over a real unix socket ---------------------------------------------------

@pytest.fixture
def socket_dir():
    path = tempfile.mkdtemp(prefix="svpn-ctl-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(socket_dir):
    inbox: list[object] = []
    srv = ControlServer(str(socket_dir / "control.sock"), lambda: SNAPSHOT, inbox.append, lambda: ("reload",))
    srv.inbox = inbox
    srv.start()
    yield srv
    srv.stop()


def exchange(path: str, raw: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        with sock.makefile("rb") as f:
            return protocol.read_message(f)


def test_status_is_answered_from_the_snapshot(server):
    status = protocol.request(server.path, "status")
    assert status == json.loads(json.dumps(SNAPSHOT.to_dict()))
    assert status["health"] == "down" and status["charon_version"] == "5.9.8"


def test_ping_answers_pong_with_the_request_id(server):
    assert exchange(server.path, b'{"id":42,"command":"ping"}\n') == {"id": 42, "ok": True, "result": {"pong": True}}


def test_unknown_command_is_an_error_answer(server):
    answer = exchange(server.path, b'{"id":5,"command":"restart"}\n')
    assert answer == {"id": 5, "ok": False,
                      "error": "unknown command 'restart' (known: status, reload, ping, drain, undrain, show-config, ha)"}
    with pytest.raises(protocol.ProtocolError, match="unknown command 'restart'"):
        protocol.request(server.path, "restart")
    assert server.inbox == []


def test_malformed_request_is_an_error_answer_without_id(server):
    answer = exchange(server.path, b"hello\n")
    assert answer["ok"] is False and answer["id"] is None
    assert answer["error"].startswith("not JSON")


def test_oversized_request_is_refused(server):
    answer = exchange(server.path, b"x" * (protocol.MAX_MESSAGE + 1))
    assert answer == {"id": None, "ok": False,
                      "error": f"message larger than {protocol.MAX_MESSAGE} bytes or truncated"}


def test_reload_posts_to_the_inbox(server):
    assert protocol.request(server.path, "reload") == {"accepted": True}
    assert server.inbox == [("reload",)]


def test_socket_file_is_mode_0660(server):
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_start_replaces_a_stale_socket_and_stop_removes_it(socket_dir):
    path = socket_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, as after a killed agent
    with pytest.raises(protocol.AgentUnreachable, match="not running"):
        protocol.request(str(path), "ping")
    srv = ControlServer(str(path), lambda: SNAPSHOT, lambda message: None, lambda: None)
    srv.start()
    try:
        assert protocol.request(str(path), "ping") == {"pong": True}
    finally:
        srv.stop()
    assert not path.exists()


# -- arguments: checked before anything reaches the loop ---------------------------------

@pytest.mark.parametrize("request_line, error", [
    (b'{"id":1,"command":"drain","args":[1]}',
     '"args" must be a JSON object such as {"tunnel": 1}, got [1]'),
    (b'{"id":1,"command":"drain","args":"tunnel 1"}',
     '"args" must be a JSON object such as {"tunnel": 1}, got \'tunnel 1\''),
    (b'{"id":1,"command":"drain","args":{"tunnel":true}}', "drain: tunnel must be 1 or 2, got true"),
    (b'{"id":1,"command":"undrain","args":{"tunnel":false}}', "undrain: tunnel must be 1 or 2, got false"),
    (b'{"id":1,"command":"drain","args":{"tunnel":"1"}}', "drain: tunnel must be 1 or 2, got '1'"),
    (b'{"id":1,"command":"drain","args":{"tunnel":1.0}}', "drain: tunnel must be 1 or 2, got 1.0"),
    (b'{"id":1,"command":"drain","args":{"tunnel":3}}', "drain: tunnel must be 1 or 2, got 3"),
    (b'{"id":1,"command":"drain","args":{}}', "drain: tunnel must be 1 or 2, got null"),
    (b'{"id":1,"command":"drain","args":{"tunnel":1,"connection":7}}',
     "drain: connection must be a name such as SPACE/VPN, got 7"),
    (b'{"id":1,"command":"drain","args":{"tunnel":1,"connection":["a/b"]}}',
     'drain: connection must be a name such as SPACE/VPN, got ["a/b"]'),
    (b'{"id":1,"command":"drain","args":{"tunnel":1,"force":true}}',
     "drain takes tunnel, connection; unknown argument(s): 'force'"),
    (b'{"id":1,"command":"status","args":{"verbose":1}}',
     "status takes no arguments; unknown argument(s): 'verbose'"),
    (b'{"id":1,"command":["status"]}',
     'unknown command ["status"] (known: status, reload, ping, drain, undrain, show-config, ha)'),
    (b'{"id":1,"command":"' + b"x" * 5000 + b'"}',
     "unknown command '" + "x" * 36 + "..." + " (known: status, reload, ping, drain, undrain, show-config, ha)"),
    (b'{"id":1,"command":"drain\\u001b[2J"}',
     "unknown command 'drain\\u001b[2J' (known: status, reload, ping, drain, undrain, show-config, ha)"),
], ids=["args-list", "args-string", "tunnel-true", "tunnel-false", "tunnel-string", "tunnel-float", "tunnel-3",
        "tunnel-missing", "connection-int", "connection-list", "unknown-arg", "status-with-args", "command-list",
        "command-huge", "command-escape"])
def test_bad_arguments_are_refused_at_once_and_never_reach_the_loop(server, request_line, error):
    started = time.monotonic()
    answer = exchange(server.path, request_line + b"\n")
    assert time.monotonic() - started < 1  # not the loop's 5 s
    assert answer == {"id": 1, "ok": False, "error": error}
    assert server.inbox == []


def test_checked_request_passes_what_agentctl_sends():
    assert protocol.checked_request({"command": "drain", "args": {"tunnel": 2, "connection": None}}) == (
        "drain", {"tunnel": 2, "connection": None})
    assert protocol.checked_request({"command": "undrain", "args": {"tunnel": 1, "connection": "a/b"}})[0] == "undrain"
    assert protocol.checked_request({"command": "status", "args": {}}) == ("status", {})
    assert protocol.checked_request({"command": "ping"}) == ("ping", {})
    assert protocol.checked_request({"command": "reload", "args": None}) == ("reload", {})


def answering_server(socket_dir, answer=(True, {"connection": "a/b", "tunnel": 1, "drained": [1]}), **limits):
    """A server whose loop answers every request with `answer` (None: never answers)."""
    posted: list[object] = []

    def post(request):
        posted.append(request)
        if answer is not None and hasattr(request, "reply"):
            request.reply.put(answer)

    srv = ControlServer(str(socket_dir / "control.sock"), lambda: SNAPSHOT, post, lambda: "reload",
                        make_request=ControlRequest, limits=Limits(**limits) if limits else LIMITS)
    srv.posted = posted
    srv.start()
    return srv


def test_drain_carries_the_peer_credentials_to_the_loop(socket_dir):
    srv = answering_server(socket_dir)
    try:
        assert protocol.request(srv.path, "drain", {"tunnel": 1, "connection": None})["drained"] == [1]
    finally:
        srv.stop()
    [request] = srv.posted
    assert (request.command, request.args) == ("drain", {"tunnel": 1, "connection": None})
    assert request.peer == f"pid {os.getpid()}, uid {os.getuid()}"


def test_peer_credentials_name_pid_and_uid():
    assert peer_of_pair() == f"pid {os.getpid()}, uid {os.getuid()}"


def peer_of_pair() -> str:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        return peer_of(a)


# -- bounded clients and deadlines, over the real socket ---------------------------------

def trickler(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.setblocking(False)
    try:
        sock.send(b'{"id"')
    except OSError:
        pass  # turned away already
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """The server let go: EOF, after a busy answer or none."""
    try:
        while sock.recv(4096):
            pass
    except BlockingIOError:
        return False
    except OSError:
        pass  # reset
    return True


def test_300_trickling_clients_hold_no_threads_and_status_is_still_answered_fast(socket_dir):
    srv = answering_server(socket_dir, request_deadline=1.0)
    threads_before = threading.active_count()
    clients = [trickler(srv.path) for _ in range(300)]
    try:
        time.sleep(0.3)  # the ones kept become old enough to give way to a newcomer
        for sock in clients:  # keep trickling, one byte each
            try:
                sock.send(b" ")
            except OSError:
                pass
        assert srv._server.open_clients <= 16
        started = time.monotonic()
        assert protocol.request(srv.path, "status", timeout=2)["charon_version"] == "5.9.8"
        assert time.monotonic() - started < 0.5
        assert threading.active_count() - threads_before <= 16
        # every trickler is let go within its deadline, however it trickles
        time.sleep(1.3)
        assert all(closed_by_server(sock) for sock in clients)
        assert srv._server.open_clients == 0
    finally:
        for sock in clients:
            sock.close()
        srv.stop()


def test_a_silent_client_is_dropped_at_the_request_deadline(socket_dir):
    srv = answering_server(socket_dir, request_deadline=0.5)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(srv.path)
            started = time.monotonic()
            assert sock.recv(10) == b""
            assert 0.4 < time.monotonic() - started < 1.5
    finally:
        srv.stop()


def test_clients_beyond_the_cap_are_told_the_agent_is_busy(socket_dir):
    srv = answering_server(socket_dir, answer=None, max_clients=4, connection_deadline=2.0)
    waiting = []
    try:
        for _ in range(4):  # four drains the loop never answers: every worker is busy
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(srv.path)
            sock.sendall(protocol.encode({"id": 1, "command": "drain", "args": {"tunnel": 1}}))
            waiting.append(sock)
        deadline = time.monotonic() + 2
        while len(srv.posted) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(protocol.ProtocolError, match="the agent is busy: 4 control clients at once"):
            protocol.request(srv.path, "status", timeout=2)
        assert time.monotonic() - started < 0.5
        for sock in waiting:  # each gets its answer by its deadline, not later
            sock.settimeout(3)
            with sock.makefile("rb") as f:
                answer = protocol.read_message(f)
            assert answer["ok"] is False and "did not answer within" in answer["error"]
        assert protocol.request(srv.path, "ping", timeout=2) == {"pong": True}
    finally:
        for sock in waiting:
            sock.close()
        srv.stop()


def test_a_client_that_never_reads_its_answer_is_dropped_at_the_connection_deadline(socket_dir):
    """The answer is sent within the connection's deadline or not at all: a worker is never
    held by a reader that stopped reading."""
    from agent.adapters.bounded_server import BoundedServer

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_dir / "big.sock"))
    listener.listen()
    srv = BoundedServer(listener, "test", lambda request: b"\n" in request,
                        lambda client: client.send(b"x" * (32 << 20)),
                        limits=Limits(connection_deadline=0.8))
    srv.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(socket_dir / "big.sock"))
            started = time.monotonic()
            sock.sendall(b"give me a lot\n")
            while not srv.open_clients and time.monotonic() - started < 1:
                time.sleep(0.01)
            while srv.open_clients and time.monotonic() - started < 3:
                time.sleep(0.05)
            assert srv.open_clients == 0
            assert 0.6 < time.monotonic() - started < 1.5
    finally:
        srv.stop()
