"""parse_config: turns the loaded YAML document into an AgentConfig, reporting every
problem at once ("<key path>: <problem and fix>") in one ConfigError.

Pure except that static connections read their PSK files (see static.py).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from agent.adapters.probe_names import host_name_problem
from agent.config.fields import _describe, _duration, _file_path, _ip, _mapping, _string
from agent.config.schema import (
    AgentConfig,
    ApiConfig,
    ConfigError,
    ConnectionConfig,
    HaConfig,
    MetricsConfig,
    ProbeConfig,
    StrongswanConfig,
    split_listen,
)
from agent.config.static import _static
from agent.core.addresses import is_loopback_host, is_private_address, url_address
from agent.core.bounds import swallowed_addresses
from agent.core.model import object_name
from agent.core.modes import Mode
from agent.core.selectors import TrafficSelectors, selector_problem

_TOP_KEYS = ("api", "strongswan", "state_dir", "control_socket", "metrics", "log_level", "ha",
             "connections")
_HA_KEYS = ("enabled", "yield_file")
_API_KEYS = ("url", "token_file", "poll_interval", "timeout", "not_found_grace", "forget_deleted_after")
_STRONGSWAN_KEYS = ("vici_socket", "connect_timeout")
_METRICS_KEYS = ("listen",)
_CONNECTION_KEYS = ("space", "vpn", "local_address", "local_id", "mode", "probe", "static",
                    "source_address", "tunnel_mtu", "tcp_mss", "preferred_tunnel", "failback_hold_down",
                    "traffic_selectors")
_PROBE_KEYS = ("target", "port", "interval", "failures", "resolve_interval")
#: (minimum, maximum) of each duration, in seconds; config/agent.example.yaml states them.
#: Polling faster than 1 s would spend the account's API budget (shared with its other
#: tools); probes faster than 50 ms are noise, slower than a minute no failover.
DURATION_BOUNDS = {
    "api.poll_interval": (1.0, 3600.0),
    "api.timeout": (1.0, 120.0),
    "api.not_found_grace": (1.0, 86400.0),
    "api.forget_deleted_after": (1.0, 7 * 86400.0),
    "strongswan.connect_timeout": (1.0, 300.0),
    "connections[].probe.interval": (0.05, 60.0),
    "connections[].probe.resolve_interval": (1.0, 3600.0),
    "connections[].failback_hold_down": (1.0, 86400.0),
}
_LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_CONFIG_NAME = 63  # characters of a space or vpn name
_MAX_SHOWN = 60


def parse_config(data: object, *, base_dir: Path) -> AgentConfig:
    """Validate the loaded YAML document; raise ConfigError listing every problem found."""
    problems: list[str] = []
    top = _mapping(data, "", _TOP_KEYS, problems)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(problems)  # nothing else to check; "connections missing" is noise
    log_level = _string(top, "log_level", "", problems, "info").lower()
    if log_level not in _LOG_LEVELS:
        problems.append(f"log_level: '{top['log_level']}' is not a log level "
                        "(use debug, info, warning or error)")
    api = _api(top.get("api"), problems, base_dir)
    config = AgentConfig(
        api=api,
        strongswan=_strongswan(top.get("strongswan"), problems, base_dir),
        state_dir=_file_path(top, "state_dir", "", problems, base_dir, AgentConfig.state_dir),
        control_socket=_file_path(top, "control_socket", "", problems, base_dir,
                                  AgentConfig.control_socket),
        metrics=_metrics(top.get("metrics"), problems),
        log_level=log_level,
        ha=_ha(top.get("ha"), problems, base_dir),
        connections=_connections(top.get("connections"), problems, base_dir, url_address(api.url)),
    )
    if config.ha.enabled:
        for index, conn in enumerate(config.connections):
            if conn.local_address is None:
                problems.append(f"connections[{index}].local_address: required with ha.enabled: the virtual "
                                "address keepalived moves between the two gateways (the one Heroku knows)")
    if problems:
        raise ConfigError(problems)
    return config


def _api(raw: object, problems: list[str], base_dir: Path) -> ApiConfig:
    section = _mapping(raw, "api", _API_KEYS, problems)
    url = _string(section, "url", "api", problems, ApiConfig.url)
    _check_api_url(url, problems)
    token_file = _file_path(section, "token_file", "api", problems, base_dir, None)
    return ApiConfig(
        url=url.rstrip("/"),
        token_file=token_file,
        poll_interval=_duration(section, "poll_interval", "api", problems, ApiConfig.poll_interval,
                                DURATION_BOUNDS["api.poll_interval"]),
        timeout=_duration(section, "timeout", "api", problems, ApiConfig.timeout, DURATION_BOUNDS["api.timeout"]),
        not_found_grace=_duration(section, "not_found_grace", "api", problems, ApiConfig.not_found_grace,
                                  DURATION_BOUNDS["api.not_found_grace"]),
        forget_deleted_after=_duration(section, "forget_deleted_after", "api", problems,
                                       ApiConfig.forget_deleted_after, DURATION_BOUNDS["api.forget_deleted_after"]),
    )


def _check_api_url(url: str, problems: list[str]) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        problems.append(f"api.url: '{url}' is not a URL (e.g. https://api.heroku.com)")
        return
    if parts.username or parts.password:
        # Don't echo the URL: it carries a credential.
        problems.append("api.url: must not contain credentials; use api.token_file")
    elif parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"api.url: '{url}' is not an https:// URL (e.g. https://api.heroku.com)")
    elif parts.scheme == "http" and not is_loopback_host(parts.hostname):
        problems.append(f"api.url: plain http is only allowed for loopback hosts, got '{url}'")


def _strongswan(raw: object, problems: list[str], base_dir: Path) -> StrongswanConfig:
    section = _mapping(raw, "strongswan", _STRONGSWAN_KEYS, problems)
    return StrongswanConfig(
        vici_socket=_file_path(section, "vici_socket", "strongswan", problems, base_dir,
                               StrongswanConfig.vici_socket),
        connect_timeout=_duration(section, "connect_timeout", "strongswan", problems,
                                   StrongswanConfig.connect_timeout, DURATION_BOUNDS["strongswan.connect_timeout"]),
    )


def _ha(raw: object, problems: list[str], base_dir: Path) -> HaConfig:
    section = _mapping(raw, "ha", _HA_KEYS, problems)
    enabled = section.get("enabled", HaConfig.enabled)
    if not isinstance(enabled, bool):
        problems.append(f"ha.enabled: expected true or false, got {_describe(enabled)}")
        enabled = HaConfig.enabled
    yield_file = section.get("yield_file")
    if yield_file == "":
        return HaConfig(enabled=enabled, yield_file="")
    return HaConfig(enabled=enabled,
                    yield_file=_file_path(section, "yield_file", "ha", problems, base_dir, HaConfig.yield_file))


def _metrics(raw: object, problems: list[str]) -> MetricsConfig:
    section = _mapping(raw, "metrics", _METRICS_KEYS, problems)
    listen = section.get("listen", MetricsConfig.listen)
    if listen is None or listen == "":
        return MetricsConfig(listen="")
    if not isinstance(listen, str):
        problems.append(f"metrics.listen: expected host:port (e.g. 127.0.0.1:19813), "
                        f"got {_describe(listen)}")
        return MetricsConfig()
    try:
        split_listen(listen)
    except ValueError as e:
        problems.append(f"metrics.listen: {e}")
    return MetricsConfig(listen=listen)


def _connections(raw: object, problems: list[str], base_dir: Path,
                 api_address: str | None) -> tuple[ConnectionConfig, ...]:
    if raw is None or raw == []:
        problems.append("connections: at least one connection is required")
        return ()
    if not isinstance(raw, list):
        problems.append(f"connections: expected a list of connections, got {_describe(raw)}")
        return ()
    parsed = []
    for index, item in enumerate(raw):
        connection = _connection(item, f"connections[{index}]", problems, base_dir, api_address)
        if connection is not None:
            parsed.append((index, connection))
    _check_unique(parsed, problems)
    return tuple(connection for _, connection in parsed)


def _check_unique(parsed: list[tuple[int, ConnectionConfig]], problems: list[str]) -> None:
    by_label: dict[str, int] = {}
    by_object: dict[str, tuple[int, str]] = {}
    for index, conn in parsed:
        # Different labels can still map to one charon name ("a-b"/"c" vs "a"/"b-c").
        name = object_name(conn.key, 1)
        if conn.label in by_label:
            problems.append(f"connections[{index}]: duplicate of "
                            f"connections[{by_label[conn.label]}] ({conn.label})")
        elif name in by_object:
            other, other_label = by_object[name]
            problems.append(f"connections[{index}]: {conn.label} and connections[{other}] "
                            f"({other_label}) get the same charon name {name}; rename one")
        by_label.setdefault(conn.label, index)
        by_object.setdefault(name, (index, conn.label))


def _connection(raw: object, path: str, problems: list[str], base_dir: Path,
                api_address: str | None) -> ConnectionConfig | None:
    """None when space/vpn are unusable; other problems only land in `problems`."""
    section = _mapping(raw, path, _CONNECTION_KEYS, problems)
    if not isinstance(raw, dict):
        return None
    static = None
    if section.get("static") is not None:
        static = _static(section["static"], f"{path}.static", problems, base_dir)
        space = _name(section, "space", path, problems, "static")
        vpn = _name(section, "vpn", path, problems, None)
        if "vpn" not in section or section["vpn"] is None:
            problems.append(f"{path}.vpn: required: a name for this static connection "
                            "(e.g. office)")
    else:
        space = _name(section, "space", path, problems, None)
        vpn = _name(section, "vpn", path, problems, None)
        _require_space_and_vpn(section, path, problems)
    local_address = _ip(section, "local_address", path, problems)
    mode = _mode(section, path, problems)
    selectors = _traffic_selectors(section, mode, path, problems)
    if static is not None:
        _check_static_selectors(static, mode, selectors, f"{path}.static", problems)
    if static is not None:
        # What the loop would refuse in every pass (core/pass_plan) is refused here already.
        for problem in swallowed_addresses(static.space_cidr_block, static.routable_cidrs,
                                           local_address=local_address, api_address=api_address):
            problems.append(f"{path}.static: {problem}")
    connection_kwargs = dict(
        local_address=local_address,
        local_id=_string(section, "local_id", path, problems, None) or local_address,
        mode=mode,
        traffic_selectors=selectors,
        probe=_probe(section.get("probe"), f"{path}.probe", problems),
        static=static,
        source_address=_ip(section, "source_address", path, problems),
        tunnel_mtu=_whole(section, "tunnel_mtu", path, problems, ConnectionConfig.tunnel_mtu, 576, 9000),
        tcp_mss=_whole(section, "tcp_mss", path, problems, ConnectionConfig.tcp_mss, 0, 8960),
        preferred_tunnel=_whole(section, "preferred_tunnel", path, problems, None, 1, 2),
        failback_hold_down=_duration(section, "failback_hold_down", path, problems,
                                     ConnectionConfig.failback_hold_down,
                                     DURATION_BOUNDS["connections[].failback_hold_down"]),
    )
    if space is None or vpn is None:
        return None
    return ConnectionConfig(space=space, vpn=vpn, **connection_kwargs)


def _whole(section: dict, key: str, path: str, problems: list[str], default: int | None,
           low: int, high: int) -> int | None:
    raw = section.get(key)
    if raw is None:
        return default
    if type(raw) is not int or not low <= raw <= high:
        problems.append(f"{path}.{key}: must be a whole number from {low} to {high}, got '{raw}'")
        return default
    return raw


def _require_space_and_vpn(section: dict, path: str, problems: list[str]) -> None:
    has_space = section.get("space") is not None
    has_vpn = section.get("vpn") is not None
    if not has_space and not has_vpn:
        problems.append(f"{path}: needs either space and vpn (Heroku) "
                        "or static (plain AWS-style VPN)")
    elif not has_vpn:
        problems.append(f"{path}.vpn: required: the VPN connection's name in the space "
                        "(heroku spaces:vpn:connections)")
    elif not has_space:
        problems.append(f"{path}.space: required: the Private Space that holds the VPN")


def _name(section: dict, key: str, path: str, problems: list[str],
          default: str | None) -> str | None:
    raw = section.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str) or not _NAME.fullmatch(raw):
        problems.append(f"{path}.{key}: '{_shown(raw)}' is not a valid name "
                        "(letters, digits, '.', '_' and '-')")
        return None
    if len(raw) > MAX_CONFIG_NAME:
        # It ends up in file names (the cache) and charon's object names.
        problems.append(f"{path}.{key}: {len(raw)} characters, more than the {MAX_CONFIG_NAME} allowed")
        return None
    return raw


def _shown(value: object) -> str:
    text = str(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _mode(section: dict, path: str, problems: list[str]) -> Mode:
    raw = section.get("mode")
    if raw is None:
        return Mode.AUTO
    try:
        return Mode(raw)
    except ValueError:
        problems.append(f"{path}.mode: '{raw}' is not a mode (use auto, route or policy)")
        return Mode.AUTO


def _traffic_selectors(section: dict, mode: Mode, path: str, problems: list[str]) -> TrafficSelectors:
    raw = section.get("traffic_selectors")
    if raw is None:
        return TrafficSelectors.CIDRS
    try:
        selectors = TrafficSelectors(raw)
    except ValueError:
        problems.append(f"{path}.traffic_selectors: '{raw}' is not a choice (use cidrs or wide)")
        return TrafficSelectors.CIDRS
    if selectors is TrafficSelectors.WIDE and mode is Mode.POLICY:
        # Only an XFRM interface's if_id keeps 0.0.0.0/0 policies to what is routed into it.
        problems.append(f"{path}.traffic_selectors: wide needs route mode (mode: route or auto); in policy mode "
                        "0.0.0.0/0 selectors would pull all of this host's traffic into the tunnel")
    return selectors


def _check_static_selectors(static, mode: Mode, selectors: TrafficSelectors, path: str,
                            problems: list[str]) -> None:
    problem = selector_problem(static.ike_version, mode, static.routable_cidrs, selectors)
    if problem is not None:
        problems.append(f"{path}.routable_cidrs: {problem}")


def _probe(raw: object, path: str, problems: list[str]) -> ProbeConfig:
    section = _mapping(raw, path, _PROBE_KEYS, problems)
    failures = section.get("failures", ProbeConfig.failures)
    if failures is None:
        failures = ProbeConfig.failures
    elif type(failures) is not int or failures < 1:
        problems.append(f"{path}.failures: must be a whole number of at least 1, got '{failures}'")
        failures = ProbeConfig.failures
    target = _probe_target(section.get("target"), path, problems)
    port = _port(section.get("port"), path, problems)
    if port is not None and section.get("target") is None:
        problems.append(f"{path}.port: needs probe.target, the host to connect to "
                        "(e.g. the internal-routing app's host name)")
    return ProbeConfig(
        target=target,
        port=port,
        interval=_duration(section, "interval", path, problems, ProbeConfig.interval,
                           DURATION_BOUNDS["connections[].probe.interval"]),
        failures=failures,
        resolve_interval=_duration(section, "resolve_interval", path, problems, ProbeConfig.resolve_interval,
                                   DURATION_BOUNDS["connections[].probe.resolve_interval"]),
    )


def _probe_target(raw: object, path: str, problems: list[str]) -> str | None:
    """An RFC 1918 IPv4 address or a host name (syntax only: it is resolved at run time)."""
    if raw is None:
        return None
    text = raw.strip() if isinstance(raw, str) else ""
    if not text:
        problems.append(f"{path}.target: expected an IPv4 address or a host name (e.g. 10.0.0.10 or "
                        f"app.example.internal), got {_describe(raw)}")
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        problem = host_name_problem(text)
        if problem is None:
            return text
        problems.append(f"{path}.target: '{text}' is not an IPv4 address or a host name: {problem}")
        return None
    if address.version != 4 or not is_private_address(text):
        problems.append(f"{path}.target: {address} is not a private (RFC 1918) address; probes cross the "
                        "tunnel to a host in the space (e.g. 10.0.0.10)")
        return None
    return str(address)


def _port(raw: object, path: str, problems: list[str]) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or not 1 <= raw <= 65535:
        problems.append(f"{path}.port: '{raw}' is not a port number (1-65535); e.g. 443 for an "
                        "internal-routing app")
        return None
    return raw
