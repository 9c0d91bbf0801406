"""How soon the loop looks again (core/pace), decided with the plan: the long tick only
while every connection is steady, the second otherwise, the quick liveness sample while
an IKE request of ours is in flight."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.core.health import ProbeStats
from agent.core.memory import ConnectionRecord, ProbeSettings
from agent.core.failover import FailoverPolicy
from agent.core.observation import CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.pace import LIVENESS_SAMPLE, STEADY_TICK, TICK
from agent.core.pass_plan import PassPlan, plan_pass
from agent.core.snapshot import Health
from tests.unit.test_pass_plan import KEY, T1, T2, inputs, loaded_fingerprints, record

START = 100.0


def charon(*, active_child: str = "INSTALLED", standby_tasks: tuple[str, ...] = (),
           standby_state: str = "ESTABLISHED") -> CharonState:
    child = ChildSa("c", "9", active_child)
    return CharonState(True, conns=frozenset({T1, T2}), sas={
        T1: TunnelSas((IkeSa("i", "7", "ESTABLISHED", established=50, children=(child,)),)),
        T2: TunnelSas((IkeSa("i", "8", standby_state, established=50, tasks_active=standby_tasks),)),
    })


def answered(sa_id: str, at: float) -> ProbeStats:
    return ProbeStats(sa_id=sa_id).record(True, 0.01, at - 1.0).record(True, 0.01, at)


def planned(rec: ConnectionRecord, now: float, observed: CharonState, loaded: dict | None = None) -> PassPlan:
    return plan_pass(replace(inputs(rec, charon=observed, loaded=loaded), now=now))


def steady_record(rec: ConnectionRecord | None = None) -> tuple[ConnectionRecord, dict]:
    """A record after a first pass over two established tunnels (tunnel 1 carrying),
    with tunnel 1's probes answered just now."""
    rec = rec or record()
    loaded = loaded_fingerprints(rec)
    first = planned(rec, START, charon(), loaded)
    memory = replace(first.steps[0].memory, probes={1: answered("7", START + 0.4)})
    return replace(rec, memory=memory), loaded


def test_a_steady_connection_is_looked_at_every_steady_tick():
    rec, loaded = steady_record()
    plan = planned(rec, START + 0.5, charon(), loaded)
    assert plan.steps[0].charon_actions == () and plan.steps[0].memory.verdict[0] is Health.OK
    assert plan.next_pass_in == STEADY_TICK


def test_the_first_pass_adopting_the_tunnels_keeps_the_second():
    rec = record()
    assert planned(rec, START, charon(), loaded_fingerprints(rec)).next_pass_in == TICK


@pytest.mark.parametrize("change, why", [
    (lambda r: replace(r, memory=replace(r.memory, probes={1: replace(r.memory.probes[1], consecutive_failures=1,
                                                                          last_ok_at=START)})),
     "its last probe was lost"),
    (lambda r: replace(r, memory=replace(r.memory, probes={})), "no probe answered yet"),
    (lambda r: replace(r, memory=replace(r.memory, probes={1: answered("other-sa", START + 0.4)})),
     "the answers crossed another IKE SA"),
    (lambda r: replace(r, settings=replace(r.settings, probe=ProbeSettings())), "no probe is configured"),
    (lambda r: replace(r, far_end=replace(r.far_end, api_error="HTTP 503")), "the API fails"),
    (lambda r: replace(r, settings=replace(r.settings, policy=FailoverPolicy(preferred=2))),
     "a failback to the preferred tunnel is pending"),
])
def test_anything_unsettled_keeps_the_second(change, why):
    rec, loaded = steady_record()
    assert planned(change(rec), START + 0.5, charon(), loaded).next_pass_in == TICK, why


def test_stale_probes_keep_the_second():
    rec, loaded = steady_record()
    assert planned(rec, START + 30.0, charon(), loaded).next_pass_in == TICK


@pytest.mark.parametrize("observed", [
    charon(active_child="REKEYING"),
    charon(standby_state="REKEYING"),
])
def test_a_rekey_under_way_keeps_the_second(observed):
    rec, loaded = steady_record()
    assert planned(rec, START + 0.5, observed, loaded).next_pass_in == TICK


def test_an_ike_request_in_flight_is_sampled_quickly():
    rec, loaded = steady_record()
    assert planned(rec, START + 0.5, charon(standby_tasks=("IKE_DPD",)), loaded).next_pass_in == LIVENESS_SAMPLE


def test_a_pass_with_setup_keeps_the_second():
    rec, _ = steady_record()
    assert planned(rec, START + 0.5, charon(), {}).next_pass_in == TICK  # nothing loaded by this process yet


def test_one_unsettled_connection_keeps_the_second_for_all():
    rec, loaded = steady_record()
    other = replace(rec, settings=replace(rec.settings, key="acme-space-lab", vpn="lab"))
    other_loaded = loaded_fingerprints(other)
    observed = charon()
    names = {T1: "svpn-acme-space-lab-t1", T2: "svpn-acme-space-lab-t2"}
    observed = replace(observed, conns=observed.conns | set(names.values()),
                       sas={**observed.sas, **{names[n]: sas for n, sas in observed.sas.items()}})
    both = {**loaded, **other_loaded}
    steady_pair = plan_pass(replace(inputs(rec, other, charon=observed, loaded=both), now=START + 0.5))
    assert [s.key for s in steady_pair.steps] == [KEY, "acme-space-lab"]
    assert steady_pair.next_pass_in == STEADY_TICK
    lost = replace(other, memory=replace(other.memory, probes={1: replace(other.memory.probes[1],
                                                                          consecutive_failures=1)}))
    assert plan_pass(replace(inputs(rec, lost, charon=observed, loaded=both), now=START + 0.5)).next_pass_in == TICK
