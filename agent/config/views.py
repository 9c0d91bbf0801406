"""Views of a valid config: the VpnConnection a static connection stands for, and the
redacted plain-data form `show-config` prints (no secret values).
"""

from __future__ import annotations

from agent.config.schema import AgentConfig, ConnectionConfig
from agent.core.durations import format_duration
from agent.core.model import ConnectionStatus, Tunnel, VpnConnection


def static_vpn_connection(conn: ConnectionConfig) -> VpnConnection:
    """The VpnConnection the API would give for this static connection, so everything
    downstream treats both kinds alike. Tunnel status is UNKNOWN: no telemetry here."""
    if conn.static is None:
        raise ValueError(f"{conn.label} is not a static connection")
    static = conn.static
    return VpnConnection(
        id="static",
        name=conn.vpn,
        public_ip=conn.local_address or "0.0.0.0",
        routable_cidrs=static.routable_cidrs,
        space_cidr_block=static.space_cidr_block,
        ike_version=static.ike_version,
        status=ConnectionStatus.ACTIVE,
        tunnels=tuple(Tunnel(number=number, ip=tunnel.ip, psk=tunnel.psk)
                      for number, tunnel in enumerate(static.tunnels, start=1)),
    )


def redacted(config: AgentConfig) -> dict:
    """The effective config as plain data for `show-config`: defaults filled in, durations
    as text, PSK files by path, no secret values. parse_config reads it back unchanged."""
    return {
        "api": {
            "url": config.api.url,
            "token_file": config.api.token_file,
            "poll_interval": format_duration(config.api.poll_interval),
            "timeout": format_duration(config.api.timeout),
            "not_found_grace": format_duration(config.api.not_found_grace),
            "forget_deleted_after": format_duration(config.api.forget_deleted_after),
        },
        "strongswan": {
            "vici_socket": config.strongswan.vici_socket,
            "connect_timeout": format_duration(config.strongswan.connect_timeout),
        },
        "state_dir": config.state_dir,
        "control_socket": config.control_socket,
        "metrics": {"listen": config.metrics.listen},
        "log_level": config.log_level,
        "ha": {"enabled": config.ha.enabled, "yield_file": config.ha.yield_file},
        "connections": [_redacted_connection(conn) for conn in config.connections],
    }


def _redacted_connection(conn: ConnectionConfig) -> dict:
    view = {
        "space": conn.space,
        "vpn": conn.vpn,
        "local_address": conn.local_address,
        "local_id": conn.local_id,
        "mode": conn.mode.value,
        "probe": {
            "target": conn.probe.target,
            "port": conn.probe.port,
            "interval": format_duration(conn.probe.interval),
            "failures": conn.probe.failures,
            "resolve_interval": format_duration(conn.probe.resolve_interval),
        },
        "source_address": conn.source_address,
        "tunnel_mtu": conn.tunnel_mtu,
        "tcp_mss": conn.tcp_mss,
        "traffic_selectors": conn.traffic_selectors.value,
        "preferred_tunnel": conn.preferred_tunnel,
        "failback_hold_down": format_duration(conn.failback_hold_down),
    }
    if conn.static is not None:
        view["static"] = {
            "ike_version": conn.static.ike_version,
            "routable_cidrs": list(conn.static.routable_cidrs),
            "space_cidr_block": conn.static.space_cidr_block,
            "tunnels": [{"ip": tunnel.ip, "psk_file": tunnel.psk_file}
                        for tunnel in conn.static.tunnels],
        }
    return view
