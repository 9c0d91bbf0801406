"""Render the agent's answers for people. Pure: dict in, str (or exit code) out.

`status` is modelled on `heroku spaces:vpn:info`: a header per connection, then one row
per tunnel with the live state next to what the Platform API reports. `show-config` is
printed as YAML that the config loader reads back; stdlib only, so agentctl starts fast.
Every text of the status document is shown as one printable line (core/text): it carries
Heroku's and charon's words, and a terminal must not take them for escape sequences.
"""

from __future__ import annotations

import re
import time

from agent.core.text import one_line

FAILOVERS_SHOWN = 5
MAX_SHOWN_TEXT = 1000  # characters of one field: the agent caps its texts well below
# The status document's health names and agentctl's exit codes (monitoring-plugin style);
# the same values as agent.core.snapshot.Health, not imported for agentctl's start-up time.
EXIT_CODES = {"ok": 0, "degraded": 1, "down": 2}
EXIT_UNKNOWN = 3  # agent unreachable or its answer unusable

_COLUMNS = ("Tunnel", "IP Address", "API Status", "IKE", "CHILD", "Role", "Since", "Bytes In", "Bytes Out",
            "Last In", "Probe")


def render_status(status: dict[str, object]) -> str:
    status = printable(status)
    lines = [f"space-vpn-agent {status['agent_version']}: {status['health'].upper()}"]
    charon = f"charon {status['charon_version'] or 'reachable'}" if status["charon_reachable"] else "charon UNREACHABLE"
    lines.append(charon)
    if status.get("api_budget"):
        lines.append(_api_budget(status["api_budget"]))
    if status.get("ha"):
        ha = status["ha"]
        heard = f", keepalived said {ha['keepalived']}" if ha.get("keepalived") else ""
        lines.append(f"HA: this node is {ha['state']}{heard}")
    for error in status.get("errors", []):
        lines.append(f"! {error}")
    for conn in status["connections"]:
        lines.append("")
        lines.append(f"=== {conn['space']}/{conn['vpn']}  {conn['health'].upper()}: {conn['summary']}")
        lines.append(f"Mode: {conn['mode']} ({conn['mode_reason']})")
        lines.append(f"Source: {conn['source']}   Connection status: {conn['connection_status']}")
        if conn.get("heroku_note"):
            lines.append(f"Heroku: {conn['heroku_note']}")
        if conn.get("ha", "off") != "off":
            lines.append(f"HA: {conn['ha']} ({conn['ha_reason']})")
        if conn.get("api_error"):
            lines.append(f"API error: {conn['api_error']}")
        lines += _rolling(conn)
        interfaces = [f"tunnel {t['number']} {t['interface']}" for t in conn["tunnels"] if t.get("interface")]
        if interfaces:
            lines.append(f"Interfaces: {', '.join(interfaces)}")
        if conn["tunnels"]:
            lines.append("")
            lines += _table([_tunnel_row(t) for t in conn["tunnels"]])
            lines += [f"Tunnel {t['number']}: {t['problem']}" for t in conn["tunnels"] if t.get("problem")]
        failovers = conn.get("failovers", [])[-FAILOVERS_SHOWN:]
        if failovers:
            lines.append("")
            lines.append("Recent failovers:")
            lines += [f"  {_timestamp(f['at'])}  tunnel {f['from_tunnel']} -> {f['to_tunnel']}  {f['reason']}"
                      for f in failovers]
    return "\n".join(lines) + "\n"


def printable(value: object) -> object:
    """`value` (decoded JSON) with every string made one printable line of bounded length."""
    if isinstance(value, str):
        return one_line(value, MAX_SHOWN_TEXT)
    if isinstance(value, dict):
        return {key: printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(item) for item in value]
    return value


def _rolling(conn: dict) -> list[str]:
    """While a change of the far end's settings rolls: which tunnel runs which."""
    latest = conn.get("generation", 0)
    behind = [t for t in conn["tunnels"] if t.get("generation", latest) != latest]
    if not behind:
        return []
    runs = ", ".join(f"tunnel {t['number']} generation {t['generation']}" for t in conn["tunnels"])
    return [f"Settings: rolling to generation {latest} ({runs})"]


def exit_code(status: dict[str, object]) -> int:
    return EXIT_CODES.get(status.get("health"), EXIT_UNKNOWN)


def _tunnel_row(tunnel: dict[str, object]) -> tuple[str, ...]:
    return (
        f"Tunnel {tunnel['number']}",
        tunnel["ip"],
        tunnel["api_status"],
        tunnel["ike_state"],
        tunnel["child_state"],
        tunnel["role"] + (" (drained)" if tunnel.get("drained") else ""),
        _duration(tunnel["established_seconds"]),
        _bytes(tunnel["bytes_in"]),
        _bytes(tunnel["bytes_out"]),
        _duration(tunnel["last_inbound_seconds"], suffix=" ago"),
        _probe(tunnel),
    )


def _api_budget(budget: dict[str, object]) -> str:
    remaining = budget["remaining"]
    left = f"{remaining} calls left" if remaining is not None else "not reported"
    if budget["stretched"]:
        pace = f"polling stretched to {_seconds(budget['poll_interval'])} (normally {_seconds(budget['base_interval'])})"
    else:
        pace = f"polling every {_seconds(budget['poll_interval'])}"
    return f"Platform API budget: {left}, {pace}"


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 or value == int(value) else f"{value:.1f} s"


def _probe(tunnel: dict[str, object]) -> str:
    if not tunnel.get("probe_sent"):
        return "-"
    if tunnel["probe_consecutive_failures"]:
        return f"lost {tunnel['probe_consecutive_failures']}"
    rtt = tunnel["probe_rtt_ms"]
    return f"{rtt:.1f} ms" if rtt is not None else "ok"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()

    return [line(_COLUMNS), line(tuple("─" * w for w in widths))] + [line(r) for r in rows]


def _timestamp(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))


def _duration(seconds: int | None, *, suffix: str = "") -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{suffix}"
    if minutes:
        return f"{minutes}m{secs:02d}s{suffix}"
    return f"{secs}s{suffix}"


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


# PyYAML's implicit types (YAML 1.1): a plain scalar matching one of these would be read
# back as a bool, number, null, date or merge key, so such strings are quoted. Patterns as
# text: re compiles them on first use, so `status` does not pay for them.
_TYPED = r"""(?x)
    yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF
  | ~|null|Null|NULL|<<|=
  | [-+]?0b[0-1_]+ | [-+]?0[0-7_]+ | [-+]?(?:0|[1-9][0-9_]*) | [-+]?0x[0-9a-fA-F_]+
  | [-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+
  | [-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)? | \.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
  | [-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]* | [-+]?\.(?:inf|Inf|INF) | \.(?:nan|NaN|NAN)
  | [0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(?:(?:[Tt]|[ \t]+).*)?"""
_PLAIN = r"[A-Za-z0-9_./~][A-Za-z0-9_./~:@+=-]*"  # no indicator, space or comment


def render_config(config: dict[str, object]) -> str:
    """The running config (plain data from `show-config`) as block-style YAML, laid out
    like PyYAML's safe_dump; strings that would read back as another type are quoted."""
    return "\n".join(_yaml_lines(config, "")) + "\n"


def _yaml_lines(value: object, pad: str) -> list[str]:
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{_scalar(key)}:")
                lines += _yaml_lines(item, pad + "  " if isinstance(item, dict) else pad)
            else:
                lines.append(f"{pad}{_scalar(key)}: {_scalar(item)}")
        return lines
    if isinstance(value, list) and value:
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = _yaml_lines(item, pad + "  ")
                lines += [f"{pad}- {nested[0][len(pad) + 2:]}", *nested[1:]]
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return lines
    return [pad + _scalar(value)]


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    text = str(value)
    if re.fullmatch(_PLAIN, text) and not text.endswith(":") and not re.fullmatch(_TYPED, text):
        return text
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    return '"' + "".join(_escaped(c) for c in text) + '"'


def _float(value: float) -> str:
    if value != value:
        return ".nan"
    if value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    return text if "." in text else text.replace("e", ".0e")  # YAML 1.1 floats need a dot


_ESCAPES = {"\t": "\\t", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def _escaped(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) < 0x10000 else f"\\U{ord(char):08x}"
