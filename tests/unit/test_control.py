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
from pathlib import Path

import pytest

from agent.control import protocol
from agent.control.server import ControlServer
from agent.core.snapshot import Snapshot

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
                      "error": "unknown command 'restart' (known: status, reload, ping, drain, undrain, show-config)"}
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
