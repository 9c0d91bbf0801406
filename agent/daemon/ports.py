"""What the loop needs of each adapter at the edge, as Protocols: the real adapters
and the test fakes both implement them (tests/unit/test_ports.py compares signatures).
"""

from __future__ import annotations

from typing import Protocol

from agent.core.desired import DesiredConnection
from agent.core.health import ProbeTarget
from agent.core.model import VpnConnection
from agent.core.netstate import NetState
from agent.core.observation import CharonState


class CharonPort(Protocol):
    """charon's command side (agent.adapters.charon.CharonClient). Raises CharonError."""

    def observe(self) -> CharonState: ...

    def load_tunnel(self, conn: DesiredConnection, number: int) -> None: ...

    def unload_conn(self, name: str) -> None: ...

    def unload_shared(self, shared_id: str) -> None: ...

    def initiate(self, conn_name: str, *, child: bool, timeout_ms: int) -> None: ...

    def terminate_child(self, child_id: str, *, timeout_ms: int) -> None: ...

    def terminate_ike(self, ike_id: str, *, timeout_ms: int) -> None: ...


class LinksPort(Protocol):
    """XFRM interfaces, routes and addresses (agent.adapters.links.LinkManager). Raises LinkError."""

    def observe(self) -> NetState: ...

    def ensure_interface(self, name: str, if_id: int, mtu: int) -> None: ...

    def remove_interface(self, name: str) -> None: ...

    def set_route(self, dst: str, ifname: str, metric: int, src: str | None) -> None: ...

    def delete_route(self, dst: str, ifname: str, metric: int) -> None: ...


class MssPort(Protocol):
    """TCP MSS clamping (agent.adapters.mss_clamp.MssClamp). Raises MssClampError."""

    def sync(self, rules: dict[str, int]) -> bool: ...


class CachePort(Protocol):
    """The last good API answers (agent.adapters.connection_cache.ConnectionCache)."""

    def load(self, space: str, vpn: str) -> VpnConnection | None: ...

    def save(self, space: str, vpn: str, raw: dict) -> None: ...

    def discard(self, space: str, vpn: str) -> None: ...


class ProberPort(Protocol):
    """Data-path probes (agent.adapters.probe.Prober). Raises ValueError for a bad target."""

    def set_targets(self, targets: list[ProbeTarget]) -> None: ...


class YieldPort(Protocol):
    """The split-brain guard's track file for keepalived (adapters/yield_file)."""

    def sync(self, yielding: bool) -> None: ...
