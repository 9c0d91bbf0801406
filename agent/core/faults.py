"""Containment: an exception while planning or applying one connection stays with that
connection. It becomes a fault: counted by stage, shown in the connection's verdict,
its tunnels left as they are, while the pass goes on for the others. No side effects.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.core.charon_objects import CharonAction, LoadTunnel, UnloadShared
from agent.core.model import object_name
from agent.core.netstate import interface_name
from agent.core.route_mode import DeleteRoute, EnsureInterface, RemoveInterface, RouteAction, SetRoute
from agent.core.snapshot import Health
from agent.core.text import one_line

MAX_FAULT_TEXT = 200  # characters of the error shown in status (the log has the traceback)


class FaultStage(enum.Enum):
    """Where one connection's pass failed (the metrics' `stage` label)."""

    PLAN = "plan"  # deciding: the pure plan raised
    APPLY = "apply"  # carrying out: an adapter raised something other than its own errors


@dataclass(frozen=True)
class ConnectionFault:
    key: str
    stage: FaultStage
    error: BaseException = field(compare=False)
    action: CharonAction | RouteAction | None = None  # what was being applied; None while planning

    @property
    def text(self) -> str:
        """The error for people, one line; the action names what failed."""
        what = f"{type(self.action).__name__}: " if self.action is not None else ""
        return one_line(f"{what}{type(self.error).__name__}: {self.error}", MAX_FAULT_TEXT)


def faulted_verdict(verdict: tuple[Health, str], fault: ConnectionFault) -> tuple[Health, str]:
    """A faulted connection is not managed (no failover, no re-initiation): at best
    degraded, whatever its tunnels did before."""
    health, _ = verdict
    doing = "planning" if fault.stage is FaultStage.PLAN else "applying"
    return (max(health, Health.DEGRADED),
            f"{doing} failed ({fault.text}); its tunnels are left as they are, the other connections go on; "
            f"see the agent's log")


def owner_of(name: str, connections: Iterable[tuple[str, str]]) -> str | None:
    """The key of the connection (key, vpn) whose charon object or XFRM interface is
    `name`; None for one no configured connection owns (being removed)."""
    for key, vpn in connections:
        names = {object_name(key, n) for n in (1, 2)} | {interface_name(key, vpn, n) for n in (1, 2)}
        if name in names:
            return key
    return None


def action_owner(action: CharonAction | RouteAction, connections: Iterable[tuple[str, str]]) -> str | None:
    """The key of the connection a setup action works for (setup is planned for all)."""
    match action:
        case LoadTunnel(connection=conn):
            return conn.key
        case UnloadShared(shared_id=name) | EnsureInterface(name=name) | RemoveInterface(name=name):
            return owner_of(name, connections)
        case SetRoute(ifname=name) | DeleteRoute(ifname=name):
            return owner_of(name, connections)
    return owner_of(getattr(action, "conn_name", ""), connections)
