"""How soon the loop looks at charon and the kernel again, decided with the plan.

Once a second by default: a pass is how a probeless connection sees a tunnel fail.
Every 0.25 s while an IKE request of ours is in flight (see LIVENESS_SAMPLE). Every
STEADY_TICK when every connection is steady: redundant, its carrying tunnel (both in
route mode) answering probes right now, nothing in negotiation, nothing pending on a
clock (failback, hold-down, backoff, a roll, a grace). Then a pass a second would only
confirm what the probes say: everything that can change a decision reaches the loop as
a message that gets a pass at once (a lost probe, a charon event, a changed answer, an
address, a control request; daemon/loop_state.quiet). The one thing only a look finds
is an IKEv2 standby in policy mode (not probed: no CHILD_SA) whose DPD goes unanswered;
it is seen within STEADY_TICK + LIVENESS_DEADLINE instead of about 2.5 s, while the
traffic is not on it. At 50 connections a pass costs about 30 ms: a pass a second is
3 % of a core. Pure: no side effects.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.decide import ConnectionStep, current_probes
from agent.core.ha import HaState
from agent.core.lifecycle import Stage, life_of
from agent.core.memory import ConnectionRecord
from agent.core.observation import ChildState, CharonState, IkeState
from agent.core.snapshot import Health

TICK = 1.0  # s between looks while anything could need one
STEADY_TICK = 10.0  # s between looks while every connection is steady
# While an IKE request is in flight the loop looks again this soon: an answered one is
# gone by then, so an exchange seen in flight at every look is one the peer left
# unanswered (charon lists no message ids to tell one DPD from the next).
LIVENESS_SAMPLE = 0.25  # s


def next_look(records: Mapping[str, ConnectionRecord], steps: tuple[ConnectionStep, ...], charon: CharonState,
              now: float, *, calm: bool) -> float:
    """Seconds until the next pass. `calm`: the pass has no setup and no faults."""
    if any(t.exchange_pending_since is not None for s in steps for t in s.memory.timing.values()):
        return LIVENESS_SAMPLE
    if calm and charon.reachable and steps and all(steady(records[s.key], s, charon, now) for s in steps):
        return STEADY_TICK
    return TICK


def steady(record: ConnectionRecord, step: ConnectionStep, charon: CharonState, now: float) -> bool:
    """Nothing about this connection can change before a message says so."""
    memory, settings = step.memory, record.settings
    if step.charon_actions or step.net_actions or step.failover is not None:
        return False
    if memory.split_brain is not None or life_of(record.far_end, settings, now).stage is not Stage.ACTIVE:
        return False
    if record.far_end.api_error is not None or memory.verdict[0] is not Health.OK:
        return False
    if memory.ha is not None and memory.ha[0] is not HaState.MASTER:
        # A backup runs nothing: it waits for its address or keepalived's word (messages).
        return memory.ha[0] is HaState.BACKUP
    conn, active = memory.desired, memory.active
    if conn is None or active is None or settings.probe.target is None:
        return False  # without probes, the pass is the detection
    if settings.policy.preferred not in (None, active):
        return False  # a failback waits for its hold-down
    if memory.inbound is not None and memory.inbound.silent_since is not None:
        return False
    for tunnel in conn.tunnels:
        health, timing = memory.health.get(tunnel.number), memory.timing.get(tunnel.conn_name)
        if health is None or not health.wanted or not health.ready or health.doubtful:
            return False
        if timing is None or timing.connecting_since is not None or timing.child_negotiating_since is not None:
            return False
        sas = charon.tunnel(tunnel.conn_name)
        if any(sa.state != IkeState.ESTABLISHED or sa.tasks_active for sa in sas.ike_sas):
            return False
        if any(child.state != ChildState.INSTALLED for child in sas.children):
            return False  # a rekey or a delete under way
        probed = tunnel.interface is not None or tunnel.number == active
        if probed:
            stats = current_probes(memory.probes.get(tunnel.number), sas)
            if stats is None or stats.consecutive_failures or stats.stale(now) or stats.last_ok_at != stats.last_at:
                return False
    return True
