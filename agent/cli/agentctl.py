"""`agentctl`: talk to the running agent over its control socket.

    agentctl [--socket PATH] status [--json]    exit 0 OK, 1 degraded, 2 down, 3 unknown
    agentctl [--socket PATH] reload
Never imports the daemon side: only the shared protocol and the pure renderer.
"""

from __future__ import annotations

import argparse
import json
import sys

from agent import __version__
from agent.cli.render import render_status
from agent.control import protocol
from agent.core.snapshot import Health

DEFAULT_SOCKET = "/run/space-vpn-agent/control.sock"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentctl", description="Query and steer the running space-vpn-agent.")
    parser.add_argument("--version", action="version", version=f"agentctl {__version__}")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="tunnels and health; exit 0 OK, 1 degraded, 2 down, 3 unknown")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    sub.add_parser("reload", help="re-read the config file (like SIGHUP)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "status":
            return _status(args.socket, as_json=args.json)
        result = protocol.request(args.socket, args.command)
        print(json.dumps(result) if args.command != "reload" else "reload requested")
        return 0
    except protocol.AgentUnreachable as e:
        print(f"agentctl: {e}", file=sys.stderr)
        return Health.UNKNOWN.value
    except protocol.ProtocolError as e:
        print(f"agentctl: the agent answered with an error: {e}", file=sys.stderr)
        return Health.UNKNOWN.value


def _status(socket_path: str, *, as_json: bool) -> int:
    status = protocol.request(socket_path, "status")
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status), end="")
    return Health[status["health"].upper()].value


if __name__ == "__main__":
    sys.exit(main())
