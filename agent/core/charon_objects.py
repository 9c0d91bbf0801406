"""charon's objects and what the agent asks of charon: the action types, and the plan
that loads what is missing or changed and unloads what nobody configures any more.

Level-triggered: every call re-derives the actions from scratch, so a missed event,
an agent restart or a charon restart all converge the same way. No side effects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.desired import DesiredConnection
from agent.core.model import OBJECT_PREFIX, object_name
from agent.core.modes import Mode
from agent.core.observation import CharonState, TunnelSas


@dataclass(frozen=True)
class LoadTunnel:
    """load-shared + load-conn for one tunnel (replaces what charon has)."""

    connection: DesiredConnection
    number: int
    fingerprint: str


@dataclass(frozen=True)
class UnloadConn:
    conn_name: str


@dataclass(frozen=True)
class UnloadShared:
    shared_id: str


@dataclass(frozen=True)
class InitiateChild:
    """Bring up the tunnel's CHILD_SA (and its IKE SA if there is none)."""

    conn_name: str


@dataclass(frozen=True)
class InitiateIke:
    """Bring up an IKE SA without a CHILD_SA: the hot standby."""

    conn_name: str


@dataclass(frozen=True)
class TerminateChild:
    conn_name: str
    child_uniqueid: str


@dataclass(frozen=True)
class TerminateIke:
    conn_name: str
    ike_uniqueid: str


CharonAction = LoadTunnel | UnloadConn | UnloadShared | InitiateChild | InitiateIke | TerminateChild | TerminateIke
INITIATES = (InitiateChild, InitiateIke)


def tunnel_fingerprint(conn: DesiredConnection, number: int) -> str:
    """Digest of everything that goes into one tunnel's charon objects, PSK included
    (hashed, never kept in clear), so a change in any of them triggers a reload. Two
    halves, "IKE:CHILD": a change of the CHILD_SA's selectors alone keeps the IKE SA."""
    tunnel = conn.tunnel(number)
    ike = (tunnel.ike_version, conn.local_address, conn.local_id, conn.mode.value, tunnel.conn_name,
           tunnel.remote_ip, tunnel.psk.reveal())
    child = (tunnel.child_ts, tunnel.if_id)
    return f"{_digest(ike)}:{_digest(child)}"


def _digest(parts: tuple) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def same_ike(fingerprint: str, other: str) -> bool:
    """Both loads describe the same IKE SA (only the CHILD_SA's settings may differ)."""
    return fingerprint.partition(":")[0] == other.partition(":")[0]


def plan_objects(
    desired: list[DesiredConnection],
    configured_keys: set[str],
    loaded: Mapping[str, str],
    charon: CharonState,
) -> list[CharonAction]:
    """Load what is missing or changed, unload our objects nobody configures any more.

    `loaded` maps connection names to the fingerprint this agent process loaded.
    Objects of a configured connection whose desired state is unknown (API down, no
    cache) are left alone: an unreachable API never tears tunnels down."""
    actions = [action for conn in desired for action in plan_loads(conn, loaded, charon)]
    return actions + plan_unloads(configured_keys, charon)


def plan_loads(conn: DesiredConnection, loaded: Mapping[str, str], charon: CharonState) -> list[CharonAction]:
    """One connection's share of plan_objects: its tunnels missing or changed."""
    actions: list[CharonAction] = []
    for tunnel in conn.tunnels:
        fingerprint = tunnel_fingerprint(conn, tunnel.number)
        known = loaded.get(tunnel.conn_name)
        if tunnel.conn_name in charon.conns and known == fingerprint:
            continue
        actions.append(LoadTunnel(conn, tunnel.number, fingerprint))
        if known is None or known == fingerprint:
            continue
        if conn.mode is Mode.ROUTE and same_ike(known, fingerprint):
            continue  # new selectors only: core/selector_roll replaces the CHILD_SA, no outage
        # Far end changed (PSK rotation, new IP): old SAs are dead weight.
        actions += terminate_all(tunnel.conn_name, charon.tunnel(tunnel.conn_name))
    return actions


def plan_unloads(configured_keys: set[str], charon: CharonState) -> list[CharonAction]:
    """Our objects (by prefix) that no configured connection names."""
    actions: list[CharonAction] = []
    ours = {object_name(key, n) for key in configured_keys for n in (1, 2)}
    for name in sorted(charon.conns):
        if name.startswith(OBJECT_PREFIX + "-") and name not in ours:
            actions.append(UnloadConn(name))
            actions += terminate_all(name, charon.tunnel(name))
    for shared_id in sorted(charon.shared_ids):
        if shared_id.startswith(OBJECT_PREFIX + "-") and shared_id not in ours:
            actions.append(UnloadShared(shared_id))
    return actions


def terminate_all(conn_name: str, sas: TunnelSas) -> list[CharonAction]:
    return [TerminateIke(conn_name, sa.uniqueid) for sa in sas.ike_sas]
