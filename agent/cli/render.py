"""Render the status document as text for people. Pure: dict in, str out.

Modelled on `heroku spaces:vpn:info`: a header per connection, then one row per
tunnel with the live state next to what the Platform API reports.
"""

from __future__ import annotations

import time
from typing import Any

FAILOVERS_SHOWN = 5

_COLUMNS = ("Tunnel", "IP Address", "API Status", "IKE", "CHILD", "Role", "Since", "Bytes In", "Bytes Out",
            "Last In", "Probe")


def render_status(status: dict[str, Any]) -> str:
    lines = [f"space-vpn-agent {status['agent_version']}: {status['health'].upper()}"]
    charon = f"charon {status['charon_version'] or 'reachable'}" if status["charon_reachable"] else "charon UNREACHABLE"
    lines.append(charon)
    for error in status.get("errors", []):
        lines.append(f"! {error}")
    for conn in status["connections"]:
        lines.append("")
        lines.append(f"=== {conn['space']}/{conn['vpn']}  {conn['health'].upper()}: {conn['summary']}")
        lines.append(f"Mode: {conn['mode']} ({conn['mode_reason']})")
        lines.append(f"Source: {conn['source']}   Connection status: {conn['connection_status']}")
        if conn.get("api_error"):
            lines.append(f"API error: {conn['api_error']}")
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


def _tunnel_row(tunnel: dict[str, Any]) -> tuple[str, ...]:
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


def _probe(tunnel: dict[str, Any]) -> str:
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
