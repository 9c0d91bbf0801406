"""Decide what to do with charon, from the whole desired and observed state.

Level-triggered: every call re-derives the actions from scratch, so a missed event,
an agent restart or a charon restart all converge the same way. No side effects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from agent.core.desired import DesiredConnection
from agent.core.model import OBJECT_PREFIX, object_name
from agent.core.observation import CONNECTING, ESTABLISHED, LIVE_CHILD_STATES, CharonState, TunnelSas

# IKEv2 standby is a childless IKE SA (RFC 6023). A peer that refuses childless
# initiation gets a regular one after this many failed tries; its child is then closed.
CHILDLESS_ATTEMPTS = 3


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


Action = LoadTunnel | UnloadConn | UnloadShared | InitiateChild | InitiateIke | TerminateChild | TerminateIke
INITIATES = (InitiateChild, InitiateIke)


@dataclass(frozen=True)
class TunnelTiming:
    """Loop-kept timing of one tunnel, fed to the planner."""

    attempts: int = 0  # initiates since the tunnel last reached its desired state
    next_attempt_at: float = 0.0  # monotonic s; initiates wait until then (backoff)
    unestablished_since: float | None = None  # monotonic s the IKE SA stopped being up
    ever_established: bool = False  # since this agent started
    uninstalled_since: float | None = None  # monotonic s the tunnel stopped having an installed CHILD_SA
    ever_installed: bool = False  # since this agent started
    connecting_since: float | None = None  # monotonic s an IKE SA was first seen CONNECTING
    child_negotiating_since: float | None = None  # monotonic s a CHILD_SA was first seen in negotiation

    def may_initiate(self, now: float) -> bool:
        """The backoff gate: no initiate before next_attempt_at."""
        return now >= self.next_attempt_at


def observe_timing(timing: TunnelTiming, sas: TunnelSas, now: float) -> TunnelTiming:
    """Advance a tunnel's timing by one observation."""
    up = sas.ike_state == ESTABLISHED
    installed = sas.installed_child is not None
    connecting = any(sa.state == CONNECTING for sa in sas.ike_sas) and not up
    return replace(
        timing,
        unestablished_since=None if up else (timing.unestablished_since or now),
        ever_established=timing.ever_established or up,
        uninstalled_since=None if installed else (timing.uninstalled_since or now),
        ever_installed=timing.ever_installed or installed,
        connecting_since=(timing.connecting_since or now) if connecting else None,
        child_negotiating_since=(timing.child_negotiating_since or now) if sas.negotiating_child else None,
    )


def plan_stuck(conn: DesiredConnection, charon: CharonState, timing: dict[str, TunnelTiming],
               now: float, connect_timeout: float) -> list[Action]:
    """Drop what has been negotiating for connect_timeout, so the next initiate (backoff
    permitting) starts afresh; charon's own retransmits grow to 40 s and more, far too
    slow to notice an endpoint that came back from maintenance:
    - an IKE SA still CONNECTING;
    - an established IKE SA whose first CHILD_SA never comes (the far end forgot that
      IKE SA, e.g. its endpoint was replaced right after Main Mode): every initiate
      would queue behind the Quick Mode it keeps retransmitting."""
    actions: list[Action] = []
    for tunnel in conn.tunnels:
        tunnel_timing = timing.get(tunnel.conn_name, TunnelTiming())
        sas = charon.tunnel(tunnel.conn_name)
        since = tunnel_timing.connecting_since
        if since is not None and now - since >= connect_timeout:
            actions += [TerminateIke(tunnel.conn_name, sa.uniqueid) for sa in sas.ike_sas if sa.state == CONNECTING]
        since = tunnel_timing.child_negotiating_since
        if since is not None and now - since >= connect_timeout:
            actions += [TerminateIke(tunnel.conn_name, sa.uniqueid) for sa in sas.ike_sas if sa.negotiating_child]
    return actions


def tunnel_fingerprint(conn: DesiredConnection, number: int) -> str:
    """Digest of everything that goes into one tunnel's charon objects, PSK included
    (hashed, never kept in clear), so a change in any of them triggers a reload."""
    tunnel = conn.tunnel(number)
    parts = (
        conn.ike_version, conn.local_address, conn.local_id, conn.local_ts, conn.remote_ts,
        conn.mode.value, tunnel.conn_name, tunnel.remote_ip, tunnel.psk.reveal(), tunnel.if_id,
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def plan_objects(
    desired: list[DesiredConnection],
    configured_keys: set[str],
    loaded: dict[str, str],
    charon: CharonState,
) -> list[Action]:
    """Load what is missing or changed, unload our objects nobody configures any more.

    `loaded` maps connection names to the fingerprint this agent process loaded.
    Objects of a configured connection whose desired state is unknown (API down, no
    cache) are left alone: an unreachable API never tears tunnels down."""
    actions: list[Action] = []
    for conn in desired:
        for tunnel in conn.tunnels:
            fingerprint = tunnel_fingerprint(conn, tunnel.number)
            known = loaded.get(tunnel.conn_name)
            if tunnel.conn_name in charon.conns and known == fingerprint:
                continue
            actions.append(LoadTunnel(conn, tunnel.number, fingerprint))
            if known is not None and known != fingerprint:
                # Far end changed (PSK rotation, new IP): old SAs are dead weight.
                actions += _terminate_all(tunnel.conn_name, charon.tunnel(tunnel.conn_name))
    ours = {object_name(key, n) for key in configured_keys for n in (1, 2)}
    for name in sorted(charon.conns):
        if name.startswith(OBJECT_PREFIX + "-") and name not in ours:
            actions.append(UnloadConn(name))
            actions += _terminate_all(name, charon.tunnel(name))
    for shared_id in sorted(charon.shared_ids):
        if shared_id.startswith(OBJECT_PREFIX + "-") and shared_id not in ours:
            actions.append(UnloadShared(shared_id))
    return actions


def _terminate_all(conn_name: str, sas: TunnelSas) -> list[Action]:
    return [TerminateIke(conn_name, sa.uniqueid) for sa in sas.ike_sas]


def adopt_active(conn: DesiredConnection, charon: CharonState, preferred: int | None) -> int:
    """Policy mode at agent start: the tunnel that already carries a CHILD_SA keeps
    carrying it, so a restart changes nothing; else the preferred tunnel, else 1.
    Later decisions belong to the failover state machine."""
    carrying = [t.number for t in conn.tunnels if charon.tunnel(t.conn_name).installed_child is not None]
    if carrying:
        return preferred if preferred in carrying else carrying[0]
    return preferred or 1


def plan_policy_mode(
    conn: DesiredConnection,
    charon: CharonState,
    active: int,
    timing: dict[str, TunnelTiming],
    now: float,
) -> list[Action]:
    """Policy mode: identical selectors share one kernel policy, so exactly one tunnel
    carries a CHILD_SA; the other keeps an IKE SA without children (hot standby)."""
    active_tunnel = conn.tunnel(active)
    standby_tunnel = conn.tunnel(3 - active)
    active_sas = charon.tunnel(active_tunnel.conn_name)
    standby_sas = charon.tunnel(standby_tunnel.conn_name)
    actions: list[Action] = []

    def may_attempt(conn_name: str) -> bool:
        return timing.get(conn_name, TunnelTiming()).may_initiate(now)

    # Active: needs an IKE SA with a live child. CONNECTING means charon is on it.
    has_live_child = any(c.state in LIVE_CHILD_STATES for c in active_sas.children)
    if not has_live_child and active_sas.ike_state in (ESTABLISHED, "DOWN"):
        if may_attempt(active_tunnel.conn_name):
            actions.append(InitiateChild(active_tunnel.conn_name))

    # Standby: an IKE SA only. Its children go once the active child carries traffic
    # (make-before-break; also cleans up what dpd_action=restart brings back).
    if standby_sas.ike_state == "DOWN":
        if may_attempt(standby_tunnel.conn_name):
            attempts = timing.get(standby_tunnel.conn_name, TunnelTiming()).attempts
            if conn.ike_version == 2 and attempts >= CHILDLESS_ATTEMPTS:
                actions.append(InitiateChild(standby_tunnel.conn_name))
            else:
                actions.append(InitiateIke(standby_tunnel.conn_name))
    elif active_sas.installed_child is not None:
        actions += [TerminateChild(standby_tunnel.conn_name, c.uniqueid) for c in standby_sas.children]
    return actions


def reached_desired_state(sas: TunnelSas, is_active: bool) -> bool:
    """True when the tunnel is where the planner wants it (resets its backoff)."""
    if is_active:
        return sas.installed_child is not None
    return sas.ike_state == ESTABLISHED


def backoff_delay(attempts: int, jitter: float, *, base: float = 1.0, cap: float = 5.0) -> float:
    """Capped exponential backoff. `jitter` in [0, 1) spreads retries by up to 20 %."""
    delay = min(cap, base * 2.0 ** min(max(0, attempts - 1), 32))  # exponent bounded: no overflow
    return delay * (0.8 + 0.4 * jitter)


def plan_replace_broken(conn: DesiredConnection, charon: CharonState, active: int, health) -> list[Action]:
    """A standby tunnel that is up but failed its probes (or went silent) holds stale
    SAs: the far end forgot them. Drop them so the tunnel is initiated afresh, but only
    while the active tunnel carries traffic fine (else the probe target may be at fault).

    `health` maps tunnel numbers to failover.TunnelHealth."""
    standby = conn.tunnel(3 - active)
    sas = charon.tunnel(standby.conn_name)
    active_ok = health[active].can_carry and charon.tunnel(conn.tunnel(active).conn_name).installed_child
    broken = health[standby.number].usable and not health[standby.number].healthy
    if not (broken and active_ok):
        return []
    return _terminate_all(standby.conn_name, sas)
