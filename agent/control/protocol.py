"""The control-socket protocol, shared by the daemon's server and agentctl.

One JSON object per line, each way, at most MAX_MESSAGE bytes:
  request  {"id": <int>, "command": "status" | "reload" | "ping" | "drain" | "undrain" | "show-config" | "ha",
            "args": {...}}   drain/undrain args: {"tunnel": 1|2, "connection": "SPACE/VPN"?}
                             ha args: {"state": "master" | "backup" | "fault"} (keepalived's notify)
  response {"id": <same>, "ok": true, "result": {...}}
         | {"id": <same>, "ok": false, "error": "<message for people>"}
Reads are answered from the published Snapshot; writes go through the loop's inbox.
"""

from __future__ import annotations

import json
import socket

MAX_MESSAGE = 1 << 20  # bytes; a status of many connections stays far below
COMMANDS = ("status", "reload", "ping", "drain", "undrain", "show-config", "ha")
HA_STATES = ("master", "backup", "fault")
#: The arguments each command takes; every other one is refused.
ARGUMENTS: dict[str, tuple[str, ...]] = {"drain": ("tunnel", "connection"), "undrain": ("tunnel", "connection"),
                                         "ha": ("state",)}


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


def checked_request(message: dict[str, object]) -> tuple[str, dict[str, object]]:
    """(command, args) of a request, its types checked; ProtocolError says what is wrong.

    drain/undrain need `tunnel` 1 or 2 (an integer, not true/false) and may name a
    `connection` (a string; null for the only one); ha needs `state`. Other commands
    take no arguments."""
    command = message.get("command")
    if not isinstance(command, str) or command not in COMMANDS:
        raise ProtocolError(f"unknown command {_shown(command)} (known: {', '.join(COMMANDS)})")
    args = message.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(f'"args" must be a JSON object such as {{"tunnel": 1}}, got {_shown(args)}')
    known = ARGUMENTS.get(command, ())
    unknown = sorted(str(name) for name in args if name not in known)
    if unknown:
        takes = f"takes {', '.join(known)}" if known else "takes no arguments"
        raise ProtocolError(f"{command} {takes}; unknown argument(s): {_shown(', '.join(unknown), 80)}")
    if "tunnel" in known:
        tunnel = args.get("tunnel")
        if type(tunnel) is not int or tunnel not in (1, 2):
            raise ProtocolError(f"{command}: tunnel must be 1 or 2, got {_shown(tunnel)}")
        connection = args.get("connection")
        if connection is not None and not isinstance(connection, str):
            raise ProtocolError(f"{command}: connection must be a name such as SPACE/VPN, got {_shown(connection)}")
    if command == "ha" and args.get("state") not in HA_STATES:
        raise ProtocolError(f"ha: state must be one of {', '.join(HA_STATES)}, got {_shown(args.get('state'))}")
    return command, args


def _shown(value: object, limit: int = 40) -> str:
    """A value from a request, short and on one line (it ends up in messages and logs):
    strings quoted as 'restart', anything else as JSON (true, [1], null)."""
    text = json.dumps(value, ensure_ascii=True)
    if isinstance(value, str):
        text = "'" + text[1:-1] + "'"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        try:
            sock.sendall(encode({"id": 1, "command": command, "args": args or {}}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # turned away before the request was in: its answer (busy) may still be there
        with sock.makefile("rb") as f:
            answer = read_message(f)
    except socket.timeout as e:
        raise AgentUnreachable(f"the agent did not answer on {path} within {timeout:g} s") from e
    except ConnectionResetError as e:
        raise AgentUnreachable(f"the agent closed the connection on {path} without an answer") from e
    finally:
        sock.close()
    if not answer.get("ok"):
        raise ProtocolError(str(answer.get("error", "unknown error")))
    return answer.get("result")
