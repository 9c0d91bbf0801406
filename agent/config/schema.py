"""The agent's config as frozen dataclasses, each field documented with its unit, plus
ConfigError and split_listen, which MetricsConfig uses to read its "host:port".

Nothing here reads files or validates YAML: see validation.py for that (and its
DURATION_BOUNDS for every duration's minimum and maximum).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from agent.core.desired import TCP_MSS, TUNNEL_MTU
from agent.core.model import Secret
from agent.core.modes import Mode
from agent.core.selectors import TrafficSelectors

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class ApiConfig:
    #: Base URL of the Heroku Platform API; plain http only for loopback (tests, fakes).
    url: str = "https://api.heroku.com"
    #: File holding the API token (absolute path). None: env HEROKU_API_KEY, else the
    #: systemd credential.
    token_file: str | None = None
    #: How often each VPN connection is read from the API, in seconds (1 s to 1 h).
    poll_interval: float = 30.0
    #: Deadline of one API request as a whole (connect to the last byte of the answer), in seconds
    #: (1 s to 2 min).
    timeout: float = 10.0
    #: A connection the API does not know (404) counts as still being created for this
    #: long (the API is eventually consistent right after a create), then as an error.
    not_found_grace: float = 300.0
    #: A connection Heroku deleted (status deleted/deleting/deprovisioning, or 404 after
    #: it was active) keeps its tunnels this long, then they are unloaded: a re-creation
    #: (new keys) usually follows, and an API glitch must not cut the space off.
    forget_deleted_after: float = 900.0


@dataclass(frozen=True)
class StrongswanConfig:
    #: Path of charon's VICI unix socket.
    vici_socket: str = "/var/run/charon.vici"
    #: Seconds an IKE SA may stay CONNECTING before it is dropped and initiated afresh
    #: (1 s to 5 min).
    connect_timeout: float = 5.0


@dataclass(frozen=True)
class MetricsConfig:
    #: Prometheus endpoint as "host:port" or "[v6addr]:port"; "" turns metrics off.
    listen: str = "127.0.0.1:19813"

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
    #: Host on the far side probed through the tunnel: an IPv4 address (RFC 1918) or a
    #: host name (resolved at run time, RFC 1918 answers only); None: no data-path probe.
    target: str | None = None
    #: Time between two probes, in seconds (50 ms to 60 s).
    interval: float = 1.0
    #: Consecutive lost probes (a count) before the active tunnel counts as broken.
    failures: int = 3
    #: TCP port a probe connects to (any answer, SYN-ACK or RST, counts); None: ICMP echo.
    port: int | None = None
    #: How often a host name target is looked up again, in seconds (1 s to 1 h).
    resolve_interval: float = 60.0


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
    #: Our address inside the routable CIDRs, the source of the agent's own packets
    #: (probes, route src); None: the first local address inside them, if any.
    source_address: str | None = None
    #: MTU of the route-mode XFRM interfaces, in bytes (AWS: 1422 usable with NAT-T
    #: and AES-CBC/SHA2-256; strongSwan's AWS sample uses 1419).
    tunnel_mtu: int = TUNNEL_MTU
    #: TCP MSS clamped on SYNs through the tunnels, in bytes (AWS samples: 1379); 0 = off.
    tcp_mss: int = TCP_MSS
    #: What the CHILD_SAs negotiate: CIDRS (every routable CIDR against the space CIDR)
    #: or WIDE (in route mode 0.0.0.0/0 both ways, the routes choose what enters the
    #: tunnel; policy mode always negotiates the CIDRs): how IKEv1 carries several
    #: routable CIDRs.
    traffic_selectors: TrafficSelectors = TrafficSelectors.CIDRS
    #: Tunnel (1 or 2) traffic returns to once it is healthy again; None: no failback.
    preferred_tunnel: int | None = None
    #: Seconds the preferred tunnel must stay healthy before failback (doubled per
    #: recent failure of it: flap damping).
    failback_hold_down: float = 60.0
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
class HaConfig:
    #: One of two gateways of a VRRP pair (keepalived): a connection's tunnels run only
    #: while its local_address (the virtual address) is on this host, or keepalived's
    #: notify (`agentctl ha master`) says so; a backup loads them and initiates nothing.
    enabled: bool = False
    #: The split-brain guard's answer to keepalived (its `track_file`): "1" while this
    #: node yields the virtual address to another holder, "0" otherwise; "" = not written
    #: (the node still stops its tunnels when it yields). In the state directory, which
    #: exists before keepalived starts (the package creates it) and outlives the agent.
    yield_file: str = "/var/lib/space-vpn-agent/ha-yield"


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
    ha: HaConfig = field(default_factory=HaConfig)
    connections: tuple[ConnectionConfig, ...] = ()


class ConfigError(ValueError):
    """The config is unusable; `problems` holds every reason, one "<key path>: ..." each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def split_listen(listen: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6addr]:port"; ValueError says what is wrong."""
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep:
        raise ValueError(f"'{listen}' is not host:port (e.g. 127.0.0.1:19813)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, version=6):
            raise ValueError(f"'{listen}': only an IPv6 address goes in brackets")
    elif ":" in host:
        raise ValueError(f"'{listen}': put an IPv6 address in brackets, e.g. [::1]:19813")
    elif not host:
        raise ValueError(f"'{listen}' has no host; use 0.0.0.0:{port_text} for every address")
    elif not (_is_ip(host) or _HOSTNAME.fullmatch(host)):
        raise ValueError(f"'{listen}': '{host}' is not an IP address or host name")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"'{listen}': the port must be a number from 1 to 65535")
    return host, int(port_text)


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version
