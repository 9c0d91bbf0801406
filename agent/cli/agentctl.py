"""`agentctl`: talk to the running agent over its control socket.

    agentctl [--socket PATH] status [--json]    exit 0 OK, 1 degraded, 2 down, 3 unknown
    agentctl [--socket PATH] status --watch [SECONDS]   redrawn in place until Ctrl-C
    agentctl [--socket PATH] reload
    agentctl [--socket PATH] show-config
    agentctl [--socket PATH] drain N [--connection SPACE/VPN]     move traffic off tunnel N
    agentctl [--socket PATH] undrain N [--connection SPACE/VPN]   let it carry traffic again
    agentctl [--socket PATH] ha master|backup|fault   keepalived's notify: this node's VRRP state
    agentctl doctor [--config PATH] [--json]    checks this host: exit 0 OK, 1 WARN, 2 FAIL
Commands other than status exit 0 when done, 1 when the agent refused, 3 when unreachable.
Imports only the shared protocol and the pure renderer, so it starts in a few ms beyond
Python's own start-up; `doctor` imports the doctor package (config, adapters) on demand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from agent import __version__
from agent.cli.render import EXIT_UNKNOWN, exit_code, printable, render_config, render_status
from agent.control import protocol

DEFAULT_SOCKET = "/run/space-vpn-agent/control.sock"
DEFAULT_CONFIG = "/etc/space-vpn-agent/agent.yaml"


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's own, told the width: left alone it imports shutil to ask, which costs
    every agentctl start a few ms, though most print no help."""
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() else 0
    if not width:
        try:
            width = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
            pass
    return argparse.HelpFormatter(prog, width=(width or 80) - 2)  # as shutil.get_terminal_size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentctl", description="Query and steer the running space-vpn-agent.",
                                     formatter_class=_formatter)
    parser.add_argument("--version", action="version", version=f"agentctl {__version__}")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, formatter_class=_formatter)

    status = command("status", "tunnels and health; exit 0 OK, 1 degraded, 2 down, 3 unknown")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.add_argument("--watch", nargs="?", type=_interval, const=1.0, metavar="SECONDS",
                        help="redraw the status in place every SECONDS (default 1) until Ctrl-C")
    command("reload", "re-read the config file (like SIGHUP)")
    command("show-config", "print the running config (secrets shown as file paths only)")
    for name, text in (("drain", "move traffic off tunnel N before you take it down"),
                       ("undrain", "let tunnel N carry traffic again")):
        steer = command(name, text)
        steer.add_argument("tunnel", type=int, choices=(1, 2), help="tunnel number, as in `status`")
        steer.add_argument("--connection", metavar="SPACE/VPN", help="needed when several are configured")
    ha = command("ha", "keepalived's notify: this node became master, backup or fault (ha.enabled)")
    ha.add_argument("state", choices=protocol.HA_STATES, help="the VRRP state keepalived entered")
    doctor = command("doctor", "check charon, kernel, firewall, sysctls, token and CIDRs; exit 0 OK, 1 WARN, 2 FAIL")
    doctor.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config file (default {DEFAULT_CONFIG})")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        return _doctor(args.config, as_json=args.json)
    try:
        if args.command == "status" and args.watch is not None:
            return _watch(args.socket, args.watch)
        if args.command == "status":
            return _status(args.socket, as_json=args.json)
        if args.command in ("drain", "undrain"):
            result = protocol.request(args.socket, args.command,
                                      {"tunnel": args.tunnel, "connection": args.connection})
            drained = ", ".join(str(n) for n in result["drained"]) or "none"
            print(printable(f"{result['connection']}: tunnel {result['tunnel']} {args.command}ed "
                            f"(drained now: {drained})"))
            return 0
        if args.command == "ha":
            result = protocol.request(args.socket, "ha", {"state": args.state})
            print(printable(f"ha: {result['state']} noted"))
            return 0
        if args.command == "show-config":
            print(render_config(protocol.request(args.socket, "show-config")), end="")
            return 0
        protocol.request(args.socket, args.command)
        print("reload requested")
        return 0
    except protocol.AgentUnreachable as e:
        print(printable(f"agentctl: {e}"), file=sys.stderr)
        return EXIT_UNKNOWN
    except protocol.ProtocolError as e:
        print(printable(f"agentctl: {args.command} refused: {e}"), file=sys.stderr)
        return EXIT_UNKNOWN if args.command == "status" else 1


def _status(socket_path: str, *, as_json: bool) -> int:
    status = protocol.request(socket_path, "status")
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status), end="")
    return exit_code(status)


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0.1 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds from 0.1 to 3600")
    return seconds


def _watch(socket_path: str, interval: float) -> int:
    import signal

    from agent.cli.watch import watch

    # Started from a background job (SIGINT ignored, which Python then keeps), the
    # watch could only be killed; Ctrl-C / SIGINT is how it ends.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def fetch() -> str:
        try:
            return render_status(protocol.request(socket_path, "status"))
        except (protocol.AgentUnreachable, protocol.ProtocolError) as e:
            return printable(f"agentctl: {e} (trying again)")
    return watch(fetch, interval, sys.stdout, terminal=sys.stdout.isatty())


def _doctor(config_path: str, *, as_json: bool) -> int:
    """In this process; imported here so the other commands never load config and adapters."""
    from agent.doctor import run_doctor

    return run_doctor(config_path, as_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
