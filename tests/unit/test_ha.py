"""Two gateways, one public IP: this node runs the tunnels while it holds the virtual
address, or keepalived's newer word says master; a backup loads them and holds no SA
and no route."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from agent.core.charon_objects import InitiateChild, InitiateIke, LoadTunnel, TerminateIke
from agent.core.ha import HaNotice, HaState, VipWatch, ha_state, observe_vip
from agent.core.modes import Mode
from agent.core.netstate import NetState, Route, interface_name
from agent.core.observation import CharonState
from agent.core.pass_plan import plan_pass
from agent.core.route_mode import DeleteRoute
from agent.core.snapshot import Health
from tests.unit.test_pass_plan import KEY, T1, T2, inputs, loaded_fingerprints, record, up

VIP = "203.0.113.10"
HELD = NetState(addresses=("127.0.0.1", VIP))
NOT_HELD = NetState(addresses=("127.0.0.1", "203.0.113.11"))


def test_the_holder_of_the_address_is_master():
    assert ha_state(VIP, VipWatch(True, 10.0), None) == (HaState.MASTER, f"this node holds {VIP}")
    assert ha_state(VIP, VipWatch(False, 10.0), None) == (HaState.BACKUP, f"{VIP} is not on this node")


def test_keepalived_newer_than_the_address_wins():
    state, why = ha_state(VIP, VipWatch(True, 10.0), HaNotice(HaState.BACKUP, 11.0))
    assert state is HaState.BACKUP and "keepalived says backup" in why
    assert ha_state(VIP, VipWatch(True, 10.0), HaNotice(HaState.FAULT, 11.0))[0] is HaState.FAULT
    # An older notice counts for nothing: the address moved since.
    assert ha_state(VIP, VipWatch(True, 12.0), HaNotice(HaState.BACKUP, 11.0))[0] is HaState.MASTER
    # Master without the address: nothing can be sent from it yet.
    state, why = ha_state(VIP, VipWatch(False, 10.0), HaNotice(HaState.MASTER, 11.0))
    assert state is HaState.BACKUP and "not on this node yet" in why


@given(st.booleans(), st.booleans(), st.floats(0, 100), st.floats(0, 100))
def test_observe_vip_keeps_the_time_of_the_last_change(before, now_present, t0, dt):
    first = observe_vip(None, before, t0)
    assert first == VipWatch(before, t0)
    second = observe_vip(first, now_present, t0 + dt)
    assert second == (first if now_present == before else VipWatch(now_present, t0 + dt))


def ha_record(mode: Mode = Mode.POLICY):
    rec = record(mode)
    return replace(rec, settings=replace(rec.settings, ha=True))


def test_a_backup_loads_the_tunnels_initiates_nothing_and_drops_its_sas():
    rec = ha_record()
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True)})
    plan = plan_pass(inputs(rec, charon=charon, net=NOT_HELD, loaded=loaded_fingerprints(rec)))
    (step,) = plan.steps
    assert [type(a) for a in step.charon_actions] == [TerminateIke]
    assert step.memory.verdict[0] is Health.OK and step.memory.verdict[1].startswith("standby (HA backup)")
    assert step.memory.ha == (HaState.BACKUP, f"{VIP} is not on this node")
    assert plan.probe_targets == () and plan.reroutes == ()
    # Nothing loaded yet: loads come first, and the backup is not a healthy one until then.
    cold = plan_pass(inputs(rec, charon=CharonState(True), net=NOT_HELD))
    assert [type(a) for a in cold.setup] == [LoadTunnel, LoadTunnel]


def test_a_backup_in_route_mode_removes_its_routes():
    rec = ha_record(Mode.ROUTE)
    ours = interface_name(KEY, "office", 1)
    net = replace(NOT_HELD, routes=(Route("10.0.0.0/16", ours, 100), Route("10.0.0.0/16", "eth0", 50)))
    plan = plan_pass(inputs(rec, net=net, loaded=loaded_fingerprints(rec)))
    assert plan.steps[0].net_actions == (DeleteRoute("10.0.0.0/16", ours, 100),)


def test_becoming_master_initiates_both_tunnels_at_once():
    rec = ha_record()
    backup = plan_pass(inputs(rec, net=NOT_HELD, loaded=loaded_fingerprints(rec))).steps[0]
    rec = replace(rec, memory=backup.memory)
    plan = replace(inputs(rec, net=HELD, loaded=loaded_fingerprints(rec)), now=100.5)
    (step,) = plan_pass(plan).steps
    assert step.memory.ha[0] is HaState.MASTER
    assert {type(a) for a in step.charon_actions} == {InitiateChild, InitiateIke}
    assert {a.conn_name for a in step.charon_actions} == {T1, T2}


@pytest.mark.parametrize("notice, expected", [
    (HaState.BACKUP, Health.OK), (HaState.FAULT, Health.DEGRADED),
])
def test_keepalived_says_backup_before_the_address_goes(notice, expected):
    rec = ha_record()
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    master = plan_pass(inputs(rec, charon=charon, net=HELD, loaded=loaded_fingerprints(rec))).steps[0]
    rec = replace(rec, memory=master.memory)
    told = replace(inputs(rec, charon=charon, net=HELD, loaded=loaded_fingerprints(rec)),
                   now=101.0, ha_notice=HaNotice(notice, 100.5))
    (step,) = plan_pass(told).steps
    assert step.memory.ha[0] is notice and step.memory.verdict[0] is expected
    assert [type(a) for a in step.charon_actions] == [TerminateIke, TerminateIke]


def test_without_ha_nothing_changes():
    rec = record()
    plan = plan_pass(inputs(rec, net=NOT_HELD, loaded=loaded_fingerprints(rec)))
    assert plan.steps[0].memory.ha is None
    assert any(isinstance(a, InitiateChild) for a in plan.steps[0].charon_actions)
