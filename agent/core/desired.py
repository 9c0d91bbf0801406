"""The desired charon setup of one VPN connection: what the agent wants loaded.

Built from the connection's config (local side, mode) and the VpnConnection that the
Platform API or a static config describes (far side, PSKs, selectors).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.model import Secret, TunnelApiStatus, VpnConnection, object_name
from agent.core.modes import Mode
from agent.core.netstate import interface_id, interface_name
from agent.core.rolling import TunnelSettings, published
from agent.core.selectors import TrafficSelectors, child_selectors

# The seed article's ipsec.conf, with `sha2` spelled as strongSwan wants it.
IKE_PROPOSAL = "aes256-sha256-modp2048"
ESP_PROPOSAL = "aes256-sha256-modp2048"
IKE_LIFETIME = 28800  # s, ikelifetime=28800s (AWS phase 1 lifetime)
CHILD_LIFETIME = 3600  # s, lifetime=1h (AWS phase 2 lifetime)
CHILD_REKEY = 3060  # s, lifetime minus strongSwan's default 9 min margin
# The seed's dpddelay=10 / dpdtimeout=30 let ~30 s of traffic go after a silent loss
# (IKEv2: ~165 s of retransmits). The agent checks the peer much sooner: charon sends a
# DPD after this long without any inbound packet (so never while traffic flows back),
# one small exchange a second per idle tunnel, and the loop counts an exchange left
# unanswered for LIVENESS_DEADLINE as a failure (core/failover).
DPD_DELAY = 1  # s
DPD_TIMEOUT = 3  # s, IKEv1 only: charon gives the peer up after this long without a packet
# Route mode: AWS tunnels do no path MTU discovery (shared/reference: AWS figures).
TUNNEL_MTU = 1419  # bytes, the strongSwan sample's tunnel MTU
TCP_MSS = 1379  # bytes, AWS samples clamp SYNs to this


@dataclass(frozen=True)
class DesiredTunnel:
    """One tunnel as charon gets it. Its far-end settings (IP, PSK, IKE version,
    selectors) are those of the generation it runs: during a roll the two differ."""

    number: int
    conn_name: str  # charon connection, child and shared-key id all use this name
    remote_ip: str
    psk: Secret
    api_status: TunnelApiStatus
    ike_version: int
    local_ts: tuple[str, ...]  # routable_cidrs (customer side)
    remote_ts: tuple[str, ...]  # space_cidr_block
    child_ts: tuple[tuple[str, ...], tuple[str, ...]]  # (local, remote) its CHILD_SA negotiates (core/selectors)
    generation: int = 1  # of the far end's settings (core/rolling)
    last_status_change: str = ""  # the API's timestamp of the last UP/DOWN change
    interface: str | None = None  # route mode: this tunnel's XFRM interface
    if_id: int | None = None  # route mode: the interface's and the child's if_id


@dataclass(frozen=True)
class DesiredConnection:
    key: str  # stable identity, e.g. "acme-space-office"
    space: str
    vpn: str
    local_address: str
    local_id: str
    local_ts: tuple[str, ...]  # routable_cidrs (customer side), latest generation
    remote_ts: tuple[str, ...]  # space_cidr_block, latest generation: what route mode routes into the tunnels
    ike_version: int  # latest generation; each tunnel has the one it runs
    mode: Mode  # resolved: ROUTE or POLICY, never AUTO
    tunnels: tuple[DesiredTunnel, ...]
    source_address: str | None = None  # ours inside local_ts: src of probes and routes
    tunnel_mtu: int = TUNNEL_MTU  # bytes, route mode interfaces
    tcp_mss: int = TCP_MSS  # bytes, 0 = no clamping
    selectors: TrafficSelectors = TrafficSelectors.CIDRS  # WIDE counts in route mode only

    @property
    def child_ts(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(local, remote) traffic selectors every tunnel's CHILD_SA negotiates: all the
        routable CIDRs against the space CIDR, or 0.0.0.0/0 both ways (wide)."""
        return child_selectors(self.mode, self.selectors, self.local_ts, self.remote_ts)

    def tunnel(self, number: int) -> DesiredTunnel:
        return self.tunnels[number - 1]

    @property
    def label(self) -> str:
        return f"{self.space}/{self.vpn}"


def desired_connection(
    *,
    key: str,
    space: str,
    vpn: str,
    local_address: str,
    local_id: str | None,
    mode: Mode,
    connection: VpnConnection,
    source_address: str | None = None,
    tunnel_mtu: int = TUNNEL_MTU,
    tcp_mss: int = TCP_MSS,
    settings: Mapping[int, TunnelSettings] | None = None,
    selectors: TrafficSelectors = TrafficSelectors.CIDRS,
) -> DesiredConnection:
    """Combine the local side with what the far end published; `settings` says which
    generation each tunnel runs (core/rolling; default: the published one). Telemetry
    (UP/DOWN) is always the latest. No side effects."""
    if mode is Mode.AUTO:
        raise ValueError("mode must be resolved (route or policy) before planning")
    route = mode is Mode.ROUTE
    runs = settings if settings is not None else published(connection, 1)
    tunnels = tuple(
        DesiredTunnel(
            number=t.number,
            conn_name=object_name(key, t.number),
            remote_ip=runs[t.number].ip,
            psk=runs[t.number].psk,
            api_status=t.status,
            ike_version=runs[t.number].ike_version,
            local_ts=runs[t.number].routable_cidrs,
            remote_ts=(runs[t.number].space_cidr_block,),
            child_ts=child_selectors(mode, selectors, runs[t.number].routable_cidrs,
                                     (runs[t.number].space_cidr_block,)),
            generation=runs[t.number].generation,
            last_status_change=t.last_status_change,
            interface=interface_name(key, vpn, t.number) if route else None,
            if_id=interface_id(key, t.number) if route else None,
        )
        for t in connection.tunnels
    )
    return DesiredConnection(
        key=key,
        space=space,
        vpn=vpn,
        local_address=local_address,
        local_id=local_id or local_address,
        local_ts=tuple(connection.routable_cidrs),
        remote_ts=(connection.space_cidr_block,),
        ike_version=connection.ike_version,
        mode=mode,
        tunnels=tunnels,
        source_address=source_address,
        tunnel_mtu=tunnel_mtu,
        tcp_mss=tcp_mss,
        selectors=selectors,
    )
