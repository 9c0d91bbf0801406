"""The agent's YAML config: frozen dataclasses, validation that reports every problem at
once ("<key path>: <problem and fix>"), and the redacted view `show-config` prints.

parse_config is pure except that static connections read their PSK files.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from agent.core.durations import format_duration, parse_duration
from agent.core.model import (
    ConnectionStatus,
    Mode,
    Secret,
    Tunnel,
    VpnConnection,
    object_name,
)


@dataclass(frozen=True)
class ApiConfig:
    #: Base URL of the Heroku Platform API; plain http only for loopback (tests, fakes).
    url: str = "https://api.heroku.com"
    #: File holding the API token (absolute path). None: env HEROKU_API_KEY, else the
    #: systemd credential.
    token_file: str | None = None
    #: How often each VPN connection is read from the API, in seconds.
    poll_interval: float = 30.0
    #: Timeout of one API request, in seconds.
    timeout: float = 10.0


@dataclass(frozen=True)
class StrongswanConfig:
    #: Path of charon's VICI unix socket.
    vici_socket: str = "/var/run/charon.vici"
    #: How long one `initiate` may take before the agent gives up on it, in seconds.
    initiate_timeout: float = 30.0


@dataclass(frozen=True)
class MetricsConfig:
    #: Prometheus endpoint as "host:port" or "[v6addr]:port"; "" turns metrics off.
    listen: str = "127.0.0.1:9813"

    @property
    def enabled(self) -> bool:
        return self.listen != ""

    @property
    def host(self) -> str | None:
        """Address to bind (IPv6 without brackets); None when metrics are off."""
        return split_listen(self.listen)[0] if self.enabled else None

    @property
    def port(self) -> int | None:
        return split_listen(self.listen)[1] if self.enabled else None


@dataclass(frozen=True)
class ProbeConfig:
    #: IP on the far side pinged through the tunnel; None: no data-path probe.
    target: str | None = None
    #: Time between two probes, in seconds.
    interval: float = 1.0
    #: Consecutive lost probes (a count) before the active tunnel counts as broken.
    failures: int = 3


@dataclass(frozen=True)
class StaticTunnelConfig:
    #: Public IP of the far end of this tunnel.
    ip: str
    #: Pre-shared key, read from psk_file.
    psk: Secret = field(repr=False)
    #: Absolute path of the file the PSK came from (shown instead of the key).
    psk_file: str = ""


@dataclass(frozen=True)
class StaticConfig:
    #: IKE version, 1 or 2.
    ike_version: int
    #: Customer-side CIDRs (RFC 1918): our local traffic selectors.
    routable_cidrs: tuple[str, ...]
    #: The far side's CIDR: the remote traffic selector.
    space_cidr_block: str
    #: Tunnel 1 and tunnel 2, in the order the VPN's configuration lists them.
    tunnels: tuple[StaticTunnelConfig, StaticTunnelConfig]


@dataclass(frozen=True)
class ConnectionConfig:
    #: Private Space name ("static" for a static connection that names none).
    space: str
    #: VPN connection name in the space (for static: the connection's own name).
    vpn: str
    #: Our public IP; None: auto-detected at start-up.
    local_address: str | None = None
    #: Our IKE identity; defaults to local_address (None while that is auto-detected).
    local_id: str | None = None
    mode: Mode = Mode.AUTO
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    #: Set for a plain AWS-style VPN: tunnels and keys come from here, not from the API.
    static: StaticConfig | None = None

    @property
    def key(self) -> str:
        """"<space>-<vpn>": the stem of this connection's charon object names."""
        return f"{self.space}-{self.vpn}"

    @property
    def label(self) -> str:
        """"<space>/<vpn>": how logs, metrics and status name this connection."""
        return f"{self.space}/{self.vpn}"


@dataclass(frozen=True)
class AgentConfig:
    api: ApiConfig = field(default_factory=ApiConfig)
    strongswan: StrongswanConfig = field(default_factory=StrongswanConfig)
    #: Directory for the last good API answers (kept 0600).
    state_dir: str = "/var/lib/space-vpn-agent"
    #: Unix socket agentctl talks to.
    control_socket: str = "/run/space-vpn-agent/control.sock"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: One of debug, info, warning, error.
    log_level: str = "info"
    connections: tuple[ConnectionConfig, ...] = ()


class ConfigError(ValueError):
    """The config is unusable; `problems` holds every reason, one "<key path>: ..." each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# --- loading -----------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently let the last win."""


def _construct_strict_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may legitimately be overridden
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_strict_mapping)


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read and validate the YAML file; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read config: {e.strerror}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text"]) from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else "?"
        raise ConfigError([f"{path}:{line}: YAML syntax error: {e.problem or e.context}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: YAML error: {e}"]) from e
    return parse_config(data, base_dir=path.absolute().parent)


# --- validation ----------------------------------------------------------------------------

_TOP_KEYS = ("api", "strongswan", "state_dir", "control_socket", "metrics", "log_level",
             "connections")
_API_KEYS = ("url", "token_file", "poll_interval", "timeout")
_STRONGSWAN_KEYS = ("vici_socket", "initiate_timeout")
_METRICS_KEYS = ("listen",)
_CONNECTION_KEYS = ("space", "vpn", "local_address", "local_id", "mode", "probe", "static")
_PROBE_KEYS = ("target", "interval", "failures")
_STATIC_KEYS = ("ike_version", "routable_cidrs", "space_cidr_block", "tunnels")
_TUNNEL_KEYS = ("ip", "psk_file")
_LOG_LEVELS = ("debug", "info", "warning", "error")
# Keys people write when they mean to inline a secret: say where the secret belongs instead.
_INLINE_SECRET_KEYS = {"psk": "psk_file", "pre_shared_key": "psk_file", "token": "token_file",
                       "api_key": "token_file"}
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")


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
    config = AgentConfig(
        api=_api(top.get("api"), problems, base_dir),
        strongswan=_strongswan(top.get("strongswan"), problems, base_dir),
        state_dir=_file_path(top, "state_dir", "", problems, base_dir, AgentConfig.state_dir),
        control_socket=_file_path(top, "control_socket", "", problems, base_dir,
                                  AgentConfig.control_socket),
        metrics=_metrics(top.get("metrics"), problems),
        log_level=log_level,
        connections=_connections(top.get("connections"), problems, base_dir),
    )
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
        poll_interval=_duration(section, "poll_interval", "api", problems, ApiConfig.poll_interval),
        timeout=_duration(section, "timeout", "api", problems, ApiConfig.timeout),
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
    elif parts.scheme == "http" and not _is_loopback(parts.hostname):
        problems.append(f"api.url: plain http is only allowed for loopback hosts, got '{url}'")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _strongswan(raw: object, problems: list[str], base_dir: Path) -> StrongswanConfig:
    section = _mapping(raw, "strongswan", _STRONGSWAN_KEYS, problems)
    return StrongswanConfig(
        vici_socket=_file_path(section, "vici_socket", "strongswan", problems, base_dir,
                               StrongswanConfig.vici_socket),
        initiate_timeout=_duration(section, "initiate_timeout", "strongswan", problems,
                                   StrongswanConfig.initiate_timeout),
    )


def _metrics(raw: object, problems: list[str]) -> MetricsConfig:
    section = _mapping(raw, "metrics", _METRICS_KEYS, problems)
    listen = section.get("listen", MetricsConfig.listen)
    if listen is None or listen == "":
        return MetricsConfig(listen="")
    if not isinstance(listen, str):
        problems.append(f"metrics.listen: expected host:port (e.g. 127.0.0.1:9813), "
                        f"got {_describe(listen)}")
        return MetricsConfig()
    try:
        split_listen(listen)
    except ValueError as e:
        problems.append(f"metrics.listen: {e}")
    return MetricsConfig(listen=listen)


def split_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6addr]:port"; ValueError says what is wrong."""
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep:
        raise ValueError(f"'{listen}' is not host:port (e.g. 127.0.0.1:9813)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, version=6):
            raise ValueError(f"'{listen}': only an IPv6 address goes in brackets")
    elif ":" in host:
        raise ValueError(f"'{listen}': put an IPv6 address in brackets, e.g. [::1]:9813")
    elif not host:
        raise ValueError(f"'{listen}' has no host; use 0.0.0.0:{port_text} for every address")
    elif not (_is_ip(host) or _HOSTNAME.fullmatch(host)):
        raise ValueError(f"'{listen}': '{host}' is not an IP address or host name")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"'{listen}': the port must be a number from 1 to 65535")
    return host, int(port_text)


def _connections(raw: object, problems: list[str], base_dir: Path) -> tuple[ConnectionConfig, ...]:
    if raw is None or raw == []:
        problems.append("connections: at least one connection is required")
        return ()
    if not isinstance(raw, list):
        problems.append(f"connections: expected a list of connections, got {_describe(raw)}")
        return ()
    parsed = []
    for index, item in enumerate(raw):
        connection = _connection(item, f"connections[{index}]", problems, base_dir)
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


def _connection(raw: object, path: str, problems: list[str],
                base_dir: Path) -> ConnectionConfig | None:
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
    connection_kwargs = dict(
        local_address=local_address,
        local_id=_string(section, "local_id", path, problems, None) or local_address,
        mode=_mode(section, path, problems),
        probe=_probe(section.get("probe"), f"{path}.probe", problems),
        static=static,
    )
    if space is None or vpn is None:
        return None
    return ConnectionConfig(space=space, vpn=vpn, **connection_kwargs)


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
        problems.append(f"{path}.{key}: '{raw}' is not a valid name "
                        "(letters, digits, '.', '_' and '-')")
        return None
    return raw


def _mode(section: dict, path: str, problems: list[str]) -> Mode:
    raw = section.get("mode")
    if raw is None:
        return Mode.AUTO
    try:
        return Mode(raw)
    except ValueError:
        problems.append(f"{path}.mode: '{raw}' is not a mode (use auto, route or policy)")
        return Mode.AUTO


def _probe(raw: object, path: str, problems: list[str]) -> ProbeConfig:
    section = _mapping(raw, path, _PROBE_KEYS, problems)
    failures = section.get("failures", ProbeConfig.failures)
    if failures is None:
        failures = ProbeConfig.failures
    elif type(failures) is not int or failures < 1:
        problems.append(f"{path}.failures: must be a whole number of at least 1, got '{failures}'")
        failures = ProbeConfig.failures
    return ProbeConfig(
        target=_ip(section, "target", path, problems),
        interval=_duration(section, "interval", path, problems, ProbeConfig.interval),
        failures=failures,
    )


def _static(raw: object, path: str, problems: list[str], base_dir: Path) -> StaticConfig | None:
    before = len(problems)
    section = _mapping(raw, path, _STATIC_KEYS, problems)
    if not isinstance(raw, dict):
        return None
    ike_version = section.get("ike_version")
    if ike_version is None:
        problems.append(f"{path}.ike_version: required: 1 or 2, as the VPN's configuration says")
    elif type(ike_version) is not int or ike_version not in (1, 2):
        problems.append(f"{path}.ike_version: must be 1 or 2, got '{ike_version}'")
    space_block = _cidr(section.get("space_cidr_block"), f"{path}.space_cidr_block", problems)
    routable = _routable_cidrs(section.get("routable_cidrs"), f"{path}.routable_cidrs",
                               space_block, problems)
    tunnels = _static_tunnels(section.get("tunnels"), f"{path}.tunnels", problems, base_dir)
    if len(problems) > before:
        return None
    return StaticConfig(ike_version=ike_version, routable_cidrs=routable,
                        space_cidr_block=str(space_block), tunnels=tunnels)


def _cidr(raw: object, path: str, problems: list[str]):
    if raw is None:
        problems.append(f"{path}: required: a CIDR block such as 10.0.0.0/16")
        return None
    try:
        return ipaddress.ip_network(raw.strip() if isinstance(raw, str) else "", strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(raw.strip(), strict=False)
        problems.append(f"{path}: '{raw}' has host bits set; did you mean {loose}?")
    except (ValueError, AttributeError):
        problems.append(f"{path}: '{raw}' is not a CIDR block (e.g. 172.16.0.0/16)")
    return None


def _routable_cidrs(raw: object, path: str, space_block, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{path}: expected a list of your side's RFC 1918 CIDR blocks, "
                        f"got {_describe(raw)}")
        return ()
    networks = []
    for index, item in enumerate(raw):
        item_path = f"{path}[{index}]"
        network = _cidr(item, item_path, problems)
        if network is None:
            continue
        if not any(network.version == 4 and network.subnet_of(private) for private in _RFC1918):
            problems.append(f"{item_path}: {network} is not private (RFC 1918: "
                            "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")
        elif space_block is not None and network.overlaps(space_block):
            problems.append(f"{item_path}: {network} overlaps space_cidr_block {space_block}")
        for earlier_index, earlier in networks:
            if network.overlaps(earlier):
                problems.append(f"{item_path}: {network} overlaps "
                                f"routable_cidrs[{earlier_index}] {earlier}")
        networks.append((index, network))
    return tuple(str(network) for _, network in networks)


def _static_tunnels(raw: object, path: str, problems: list[str], base_dir: Path):
    if not isinstance(raw, list) or len(raw) != 2:
        count = len(raw) if isinstance(raw, list) else _describe(raw)
        problems.append(f"{path}: expected exactly two tunnels (tunnel 1 and tunnel 2), "
                        f"got {count}")
        return ()
    tunnels = tuple(_static_tunnel(item, f"{path}[{index}]", problems, base_dir)
                    for index, item in enumerate(raw))
    if all(tunnels) and tunnels[0].ip == tunnels[1].ip:
        problems.append(f"{path}[1].ip: same as tunnels[0] ({tunnels[0].ip}); "
                        "the two tunnels need distinct IPs")
    return tunnels


def _static_tunnel(raw: object, path: str, problems: list[str],
                   base_dir: Path) -> StaticTunnelConfig | None:
    section = _mapping(raw, path, _TUNNEL_KEYS, problems)
    if not isinstance(raw, dict):
        return None
    ip = _ip(section, "ip", path, problems)
    if ip is None and section.get("ip") is None:
        problems.append(f"{path}.ip: required: the public IP of this tunnel's far end")
    psk = _read_psk(section.get("psk_file"), f"{path}.psk_file", problems, base_dir)
    if ip is None or psk is None:
        return None
    return StaticTunnelConfig(ip=ip, psk=psk[0], psk_file=psk[1])


def _read_psk(raw: object, path: str, problems: list[str],
              base_dir: Path) -> tuple[Secret, str] | None:
    """(key, absolute path), checking first that nobody but the owner can read the file.

    Messages name the file, never its content."""
    if raw is None:
        problems.append(f"{path}: required: a file holding the tunnel's pre-shared key "
                        "(chmod 600)")
        return None
    if not isinstance(raw, str) or not raw.strip():
        problems.append(f"{path}: expected a file path, got {_describe(raw)}")
        return None
    file = _resolve(raw, base_dir)
    try:
        info = os.stat(file)
    except FileNotFoundError:
        problems.append(f"{path}: {file} does not exist")
        return None
    except OSError as e:
        problems.append(f"{path}: cannot read {file}: {e.strerror}")
        return None
    if not stat.S_ISREG(info.st_mode):
        problems.append(f"{path}: {file} is not a regular file")
        return None
    if info.st_mode & 0o077:
        problems.append(f"{path}: {file} is accessible by group or others "
                        f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600 {file}")
        return None
    try:
        key = file.read_text(encoding="utf-8").strip()
    except OSError as e:
        problems.append(f"{path}: cannot read {file}: {e.strerror}")
        return None
    except UnicodeDecodeError:
        # The decoder's own message quotes bytes of the key: keep it out.
        problems.append(f"{path}: {file} is not UTF-8 text")
        return None
    if not key:
        problems.append(f"{path}: {file} is empty; it must hold the pre-shared key")
        return None
    if "\n" in key:
        problems.append(f"{path}: {file} holds more than one line; it must hold only the key")
        return None
    return Secret(key), str(file)


# --- small value helpers -----------------------------------------------------------------

def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(raw: object, path: str, known: tuple[str, ...], problems: list[str]) -> dict:
    """The section as a dict ({} when absent or wrong); every unknown key is a problem."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: expected a mapping with keys "
                        f"{', '.join(known)}, got {_describe(raw)}")
        return {}
    for key in raw:
        if key in known:
            continue
        secret_home = _INLINE_SECRET_KEYS.get(key)
        if secret_home in known:
            problems.append(f"{_at(path, str(key))}: secrets are not allowed in the config; "
                            f"put it in a file (chmod 600) and name that file with {secret_home}")
        else:
            problems.append(f"{_at(path, str(key))}: unknown key (known: {', '.join(known)})")
    return raw


def _describe(value: object) -> str:
    """A value's kind, not its content (the content may be a misplaced secret)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _string(section: dict, key: str, path: str, problems: list[str], default):
    raw = section.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str) or not raw.strip():
        problems.append(f"{_at(path, key)}: expected a non-empty string, got {_describe(raw)}")
        return default
    return raw.strip()


def _file_path(section: dict, key: str, path: str, problems: list[str], base_dir: Path, default):
    value = _string(section, key, path, problems, None)
    return default if value is None else str(_resolve(value, base_dir))


def _resolve(value: str, base_dir: Path) -> Path:
    # Relative to the config file's folder, not to wherever the daemon was started.
    return Path(base_dir, value.strip())


def _duration(section: dict, key: str, path: str, problems: list[str], default: float) -> float:
    raw = section.get(key)
    if raw is None:
        return default
    try:
        seconds = parse_duration(raw, path=_at(path, key))
    except ValueError as e:
        problems.append(str(e))
        return default
    if seconds <= 0:
        problems.append(f"{_at(path, key)}: must be longer than 0s, got '{raw}'")
        return default
    return seconds


def _ip(section: dict, key: str, path: str, problems: list[str]) -> str | None:
    raw = section.get(key)
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw.strip() if isinstance(raw, str) else ""))
    except ValueError:
        problems.append(f"{_at(path, key)}: '{raw}' is not an IP address")
        return None


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


# --- views of a valid config -------------------------------------------------------------

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
        },
        "strongswan": {
            "vici_socket": config.strongswan.vici_socket,
            "initiate_timeout": format_duration(config.strongswan.initiate_timeout),
        },
        "state_dir": config.state_dir,
        "control_socket": config.control_socket,
        "metrics": {"listen": config.metrics.listen},
        "log_level": config.log_level,
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
            "interval": format_duration(conn.probe.interval),
            "failures": conn.probe.failures,
        },
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
