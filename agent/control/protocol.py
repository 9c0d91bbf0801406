"""The control-socket protocol, shared by the daemon's server and agentctl.

One JSON object per line, each way, at most MAX_MESSAGE bytes:
  request  {"id": <int>, "command": "status" | "reload" | "ping" | "drain" | "undrain" | "show-config",
            "args": {...}}   drain/undrain args: {"tunnel": 1|2, "connection": "SPACE/VPN"?}
  response {"id": <same>, "ok": true, "result": {...}}
         | {"id": <same>, "ok": false, "error": "<message for people>"}
Reads are answered from the published Snapshot; writes go through the loop's inbox.
"""

from __future__ import annotations

import json
import socket

MAX_MESSAGE = 1 << 20  # bytes; a status of many connections stays far below
COMMANDS = ("status", "reload", "ping", "drain", "undrain", "show-config")


class ProtocolError(Exception):
    """A malformed, oversized or truncated message."""


class AgentUnreachable(Exception):
    """Nothing listens on the control socket (agent not running?)."""


def encode(message: dict[str, object]) -> bytes:
    data = json.dumps(message, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(line: bytes) -> dict[str, object]:
    try:
        message = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from e
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def read_message(sock_file) -> dict[str, object]:
    """Read one line from a socket file object, refusing oversized input."""
    line = sock_file.readline(MAX_MESSAGE + 1)
    if not line:
        raise ProtocolError("connection closed before a message arrived")
    if len(line) > MAX_MESSAGE or not line.endswith(b"\n"):
        raise ProtocolError(f"message larger than {MAX_MESSAGE} bytes or truncated")
    return decode(line)


def request(path: str, command: str, args: dict[str, object] | None = None, *, timeout: float = 5.0) -> object:
    """Send one request and return its result; raise on an error answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise AgentUnreachable(
                f"the agent is not running (no answer on {path}); start it with `systemctl start space-vpn-agent`"
            ) from e
        except PermissionError as e:
            raise AgentUnreachable(f"permission denied on {path}: run as root or a member of its group") from e
        except OSError as e:
            raise AgentUnreachable(f"cannot connect to {path}: {e.strerror or e}") from e
        sock.sendall(encode({"id": 1, "command": command, "args": args or {}}))
        with sock.makefile("rb") as f:
            answer = read_message(f)
    except socket.timeout as e:
        raise AgentUnreachable(f"the agent did not answer on {path} within {timeout:g} s") from e
    finally:
        sock.close()
    if not answer.get("ok"):
        raise ProtocolError(str(answer.get("error", "unknown error")))
    return answer.get("result")
