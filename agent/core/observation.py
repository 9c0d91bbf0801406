"""What charon reports, as frozen dataclasses: IKE SAs, CHILD_SAs, loaded objects.

The charon adapter parses VICI answers into these; the planner reads them. A tunnel
may briefly own two IKE SAs (IKEv1 reauthentication makes a new one before deleting
the old), so every view here tolerates several.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from agent.core.model import Lenient


class IkeState(Lenient, enum.StrEnum):
    """charon's IKE_SA states (ike_sa.h), plus DOWN: no IKE SA at all."""

    CREATED = "CREATED"
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    PASSIVE = "PASSIVE"
    REKEYING = "REKEYING"
    REKEYED = "REKEYED"
    DELETING = "DELETING"
    DESTROYING = "DESTROYING"
    DOWN = "DOWN"
    UNKNOWN = "UNKNOWN"  # a state this agent does not know (a newer charon)


class ChildState(Lenient, enum.StrEnum):
    """charon's CHILD_SA states (child_sa.h), plus NONE: no CHILD_SA at all."""

    CREATED = "CREATED"
    ROUTED = "ROUTED"
    INSTALLING = "INSTALLING"
    INSTALLED = "INSTALLED"
    UPDATING = "UPDATING"
    REKEYING = "REKEYING"
    REKEYED = "REKEYED"
    RETRYING = "RETRYING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    DESTROYING = "DESTROYING"
    NONE = "NONE"
    UNKNOWN = "UNKNOWN"


ESTABLISHED = IkeState.ESTABLISHED
CONNECTING = IkeState.CONNECTING
INSTALLED = ChildState.INSTALLED
# Children in these states still carry (or are about to carry) traffic.
LIVE_CHILD_STATES = frozenset({ChildState.INSTALLED, ChildState.REKEYING, ChildState.REKEYED,
                               ChildState.INSTALLING, ChildState.CREATED})
# charon's task that negotiates a CHILD_SA: IKEv1 Quick Mode, IKEv2 CREATE_CHILD_SA.
CHILD_NEGOTIATION_TASKS = frozenset({"QUICK_MODE", "CHILD_CREATE"})


@dataclass(frozen=True)
class ChildSa:
    name: str
    uniqueid: str
    state: ChildState
    reqid: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    use_in: int | None = None  # seconds since the last inbound packet; None = never
    use_out: int | None = None
    install_time: int = 0  # seconds since installed
    spi_in: str = ""
    local_ts: tuple[str, ...] = ()  # the traffic selectors it was negotiated with
    remote_ts: tuple[str, ...] = ()

    def outdated(self, child_ts: tuple[tuple[str, ...], tuple[str, ...]]) -> bool:
        """Negotiated with other (local, remote) selectors than these (a child whose
        selectors charon did not report counts as current)."""
        local, remote = child_ts
        return bool(self.local_ts) and (_networks(self.local_ts), _networks(self.remote_ts)) != (
            _networks(local), _networks(remote))


def _networks(selectors: Iterable[str]) -> frozenset[str]:
    """charon writes "10.0.0.0/16" (and "10.0.0.0/16[tcp/80]" with ports): compared as
    networks, a bare address as its /32."""
    out = set()
    for text in selectors:
        try:
            out.add(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            out.add(text)
    return frozenset(out)


@dataclass(frozen=True)
class IkeSa:
    name: str
    uniqueid: str
    state: IkeState
    version: int = 0
    local_host: str = ""
    remote_host: str = ""
    established: int | None = None  # seconds since established
    children: tuple[ChildSa, ...] = ()
    tasks_active: tuple[str, ...] = ()  # exchanges in flight, e.g. QUICK_MODE

    @property
    def negotiating_child(self) -> bool:
        """Established, with a CHILD_SA negotiation in flight."""
        return self.state == ESTABLISHED and bool(CHILD_NEGOTIATION_TASKS.intersection(self.tasks_active))


@dataclass(frozen=True)
class TunnelSas:
    """All SAs charon holds for one tunnel's connection name."""

    ike_sas: tuple[IkeSa, ...] = ()

    # Cached: the frozen observation is asked these many times per pass (decide, views,
    # plans), and at 50 connections recomputing them was a visible part of an idle pass.
    @cached_property
    def established_ike(self) -> IkeSa | None:
        return next((sa for sa in self.ike_sas if sa.state == ESTABLISHED), None)

    @property
    def ike_state(self) -> IkeState:
        """ESTABLISHED if any IKE SA is, else the state of the first one, else DOWN."""
        if self.established_ike is not None:
            return IkeState.ESTABLISHED
        return IkeState.parse(self.ike_sas[0].state) if self.ike_sas else IkeState.DOWN

    @cached_property
    def children(self) -> tuple[ChildSa, ...]:
        return tuple(child for sa in self.ike_sas for child in sa.children)

    @cached_property
    def installed_child(self) -> ChildSa | None:
        return next((c for c in self.children if c.state == INSTALLED), None)

    @property
    def child_state(self) -> ChildState:
        if self.installed_child is not None:
            return ChildState.INSTALLED
        return ChildState.parse(self.children[0].state) if self.children else ChildState.NONE

    @property
    def request_in_flight(self) -> bool:
        """An established IKE SA of ours waits for the peer's answer to a request of ours
        (DPD, rekey, Quick Mode...): charon lists it among the active tasks until then."""
        return any(sa.state == IkeState.ESTABLISHED and sa.tasks_active for sa in self.ike_sas)

    @property
    def negotiating_child(self) -> bool:
        """An established IKE SA is negotiating a CHILD_SA (and none is installed yet)."""
        return self.installed_child is None and any(sa.negotiating_child for sa in self.ike_sas)

    def ike_owning(self, child: ChildSa) -> IkeSa | None:
        return next((sa for sa in self.ike_sas if child in sa.children), None)


@dataclass(frozen=True)
class CharonState:
    """One observation of charon. `reachable` False means nothing else is known."""

    reachable: bool
    version: str = ""
    conns: frozenset[str] = frozenset()  # loaded connection names
    shared_ids: frozenset[str] = frozenset()  # loaded shared-key ids
    sas: dict[str, TunnelSas] = field(default_factory=dict)  # by connection name
    error: str | None = None  # why it is unreachable (one line, with the fix where known)

    def tunnel(self, conn_name: str) -> TunnelSas:
        return self.sas.get(conn_name, TunnelSas())
