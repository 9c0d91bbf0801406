"""One pass as one pure function: records and one observation in, one ordered plan out.
No adapter, no clock: every input is a frozen value."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.core.charon_objects import InitiateChild, InitiateIke, LoadTunnel, TerminateIke, UnloadConn
from agent.core.failover import FailoverKind, FailoverState
from agent.core.health import ProbeTarget
from agent.core.lifecycle import far_end_after_answer
from agent.core.memory import ConnectionRecord, ConnectionSettings, FarEnd, ProbeSettings
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnAnswer, VpnConnection
from agent.core.modes import Mode
from agent.core.netstate import Link, NetState, interface_name
from agent.core.observation import CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.pass_plan import PassInputs, connection_selector_problem, plan_pass
from agent.core.route_mode import EnsureInterface
from agent.core.selectors import TrafficSelectors, selector_problem
from agent.core.snapshot import Health

KEY = "acme-space-office"
T1, T2 = "svpn-acme-space-office-t1", "svpn-acme-space-office-t2"
VPN = VpnConnection(
    id="1", name="office", public_ip="203.0.113.10", routable_cidrs=("172.16.0.0/16",), space_cidr_block="10.0.0.0/16",
    ike_version=1, status=ConnectionStatus.ACTIVE,
    tunnels=(Tunnel(1, "198.51.100.1", Secret("k1.xxxxxxxx")), Tunnel(2, "198.51.100.2", Secret("k2.xxxxxxxx"))),
)


def record(mode: Mode = Mode.POLICY, vpn: VpnConnection | None = VPN, **far_end) -> ConnectionRecord:
    settings = ConnectionSettings(key=KEY, space="acme-space", vpn="office", mode=mode, mode_reason="configured",
                                  local_address="203.0.113.10", probe=ProbeSettings(target="10.0.0.10", interval=0.5))
    return ConnectionRecord(settings, FarEnd(vpn=vpn, source="api" if vpn else "none", **far_end))


def inputs(*records: ConnectionRecord, charon: CharonState | None = None, net: NetState = NetState(),
           loaded: dict | None = None) -> PassInputs:
    charon = charon if charon is not None else CharonState(True, conns=frozenset({T1, T2}))
    loaded = loaded if loaded is not None else {}
    return PassInputs(records=records, charon=charon, net=net, loaded=loaded, detected={}, now=100.0,
                      wall_now=1_800_000_000.0, jitter={})


def up(child: bool) -> TunnelSas:
    children = (ChildSa("c", "9", "INSTALLED"),) if child else ()
    return TunnelSas((IkeSa("i", "7", "ESTABLISHED", established=5, children=children),))


def loaded_fingerprints(rec: ConnectionRecord) -> dict[str, str]:
    """What a process that loaded this record's tunnels remembers."""
    plan = plan_pass(inputs(rec, charon=CharonState(True)))
    return {a.connection.tunnel(a.number).conn_name: a.fingerprint for a in plan.setup if isinstance(a, LoadTunnel)}


def test_a_pass_that_loads_asks_for_a_fresh_observation_first():
    plan = plan_pass(inputs(record(), charon=CharonState(True)))
    assert [type(a) for a in plan.setup] == [LoadTunnel, LoadTunnel]
    assert plan.needs_fresh_observation


def test_a_loaded_connection_is_decided_in_the_same_pass():
    rec = record()
    plan = plan_pass(inputs(rec, loaded=loaded_fingerprints(rec)))
    assert not plan.needs_fresh_observation
    (step,) = plan.steps
    assert step.charon_actions == (InitiateChild(T1), InitiateIke(T2))
    assert step.memory.active == 1 and step.memory.timing[T1].attempts == 1  # the backoff counts the initiate


def test_probes_need_a_source_inside_the_routable_cidrs():
    rec = record()
    net = NetState(addresses=("203.0.113.10", "172.16.0.2"))
    plan = plan_pass(inputs(rec, net=net, loaded=loaded_fingerprints(rec)))
    assert plan.probe_targets == (ProbeTarget(KEY, 1, "10.0.0.10", "172.16.0.2", None, 0.5, 0.5),)
    assert plan_pass(inputs(rec, loaded=loaded_fingerprints(rec))).probe_targets == ()


def test_charon_unreachable_plans_nothing_and_says_so():
    plan = plan_pass(inputs(record(), charon=CharonState(reachable=False)))
    assert (plan.setup, plan.reroutes, plan.mss_rules) == ((), (), None)
    (step,) = plan.steps
    assert (step.charon_actions, step.net_actions) == ((), ())
    assert step.memory.verdict == (Health.DOWN, "charon unreachable")
    told = plan_pass(inputs(record(), charon=CharonState(reachable=False, error="cannot reach charon at /s: gone")))
    assert told.steps[0].memory.verdict == (Health.DOWN, "charon unreachable (cannot reach charon at /s: gone)")


def test_why_charon_cannot_be_reached_comes_with_the_fix(tmp_path):
    import socket

    import pytest

    from agent.adapters.charon import CharonUnavailable, _connect

    with pytest.raises(CharonUnavailable, match="No such file or directory: is charon running"):
        _connect(str(tmp_path / "charon.vici"), 1.0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(tmp_path / "closed.vici"))  # bound, never listening: refused
        with pytest.raises(CharonUnavailable, match="charon is not listening"):
            _connect(str(tmp_path / "closed.vici"), 1.0)


def test_a_connection_without_its_far_end_waits_and_the_others_go_on():
    waiting = replace(record(vpn=None, connection_status="provisioning"),
                      settings=replace(record().settings, key="acme-space-lab", vpn="lab"))
    rec = record()
    plan = plan_pass(inputs(waiting, rec, loaded=loaded_fingerprints(rec)))
    assert [s.key for s in plan.steps] == ["acme-space-lab", KEY]
    assert plan.steps[0].charon_actions == ()
    assert plan.steps[0].memory.verdict == (Health.DOWN, "waiting for Heroku: the VPN connection is provisioning")
    assert plan.steps[1].charon_actions == (InitiateChild(T1), InitiateIke(T2))


def test_objects_nobody_configures_are_unloaded_but_an_unknown_far_end_keeps_its_own():
    charon = CharonState(True, conns=frozenset({T1, T2, "svpn-gone-t1"}))
    plan = plan_pass(inputs(record(vpn=None, api_error="HTTP 503"), charon=charon))
    assert plan.setup == (UnloadConn("svpn-gone-t1"),)
    assert plan.steps[0].memory.verdict == (Health.DOWN, "waiting for the Platform API: HTTP 503")


def test_route_mode_sets_up_interfaces_then_arms_the_reroute_and_records_typed_failovers():
    rec = record(Mode.ROUTE)
    plan = plan_pass(inputs(rec, loaded=loaded_fingerprints(rec)))
    assert [type(a) for a in plan.setup] == [EnsureInterface, EnsureInterface] and plan.needs_fresh_observation
    links = {name: Link(name, 10 + n, "xfrm", None, 1419, True) for n, name in
             enumerate(interface_name(KEY, "office", n) for n in (1, 2))}
    links = {name: replace(link, if_id=a.if_id) for a in plan.setup for name, link in links.items() if a.name == name}
    net = NetState(links=links, addresses=("172.16.0.2",))
    both = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(True)})
    plan = plan_pass(inputs(rec, charon=both, net=net, loaded=loaded_fingerprints(rec)))
    assert plan.setup == () and [r.to_tunnel for r in plan.reroutes] == [2]
    assert plan.mss_rules == {name: 1379 for name in links}
    assert {t.tunnel for t in plan.probe_targets} == {1, 2}  # both paths probed through their own interface
    settled = replace(rec, memory=replace(plan.steps[0].memory, failover=FailoverState(active=1)))
    only_2 = CharonState(True, conns=frozenset({T1, T2}), sas={T2: up(True)})
    plan = plan_pass(replace(inputs(settled, charon=only_2, net=net, loaded=loaded_fingerprints(rec)), now=200.0))
    (step,) = plan.steps
    assert step.failover is not None and step.failover.reason.kind is FailoverKind.DOWN
    assert (step.failover.from_tunnel, step.failover.to_tunnel) == (1, 2)
    assert step.memory.failover_counts == {FailoverKind.DOWN: 1} and step.memory.active == 2
    assert plan.reroutes == ()  # nowhere to move to: tunnel 1 has no CHILD_SA


def test_tunnels_whose_far_end_changed_start_over():
    rec = record()
    loaded = loaded_fingerprints(rec)
    rotated = replace(rec, far_end=replace(rec.far_end, vpn=replace(VPN, tunnels=(
        replace(VPN.tunnel(1), psk=Secret("k9.rotated")), VPN.tunnel(2)))))
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    plan = plan_pass(inputs(rotated, charon=charon, loaded=loaded))
    assert [type(a).__name__ for a in plan.setup] == ["LoadTunnel", "TerminateIke"]
    assert plan.starting_over == frozenset({T1})
    assert plan_pass(inputs(rec, charon=charon, loaded=loaded)).starting_over == frozenset()


def test_probe_results_of_a_tunnel_no_longer_probed_stop_counting():
    """Policy mode probes only the active tunnel: after a move, the old one's last word
    ("probes lost", from a burst that hit both) must not hold it unhealthy for ever."""
    from agent.core.health import ProbeStats

    rec = record()
    failing = ProbeStats(sa_id="7", sent=4, lost=3, consecutive_failures=3, last_at=100.0 - 1.0)
    memory = replace(rec.memory, failover=FailoverState(active=2), probes={1: failing})
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(False), T2: up(True)})
    fresh = plan_pass(inputs(replace(rec, memory=memory), charon=charon, loaded=loaded_fingerprints(rec)))
    assert fresh.steps[0].memory.health[1].problem is not None  # a second ago: it counts
    stale = replace(inputs(replace(rec, memory=memory), charon=charon, loaded=loaded_fingerprints(rec)), now=110.0)
    assert plan_pass(stale).steps[0].memory.health[1].ready  # ten seconds on: no verdict any more


# --- the far end's life: rolls and deletions ---------------------------------------------------


def settled(rec: ConnectionRecord, charon: CharonState, loaded: dict) -> ConnectionRecord:
    """The record after a pass over a steady state: memory as the loop keeps it."""
    (step,) = plan_pass(inputs(rec, charon=charon, loaded=loaded)).steps
    return replace(rec, memory=step.memory)


def rotated(vpn: VpnConnection) -> VpnConnection:
    return replace(vpn, tunnels=tuple(replace(t, psk=Secret(t.psk.reveal() + "-new")) for t in vpn.tunnels))


def test_new_keys_roll_the_standby_first_then_move_then_the_other():
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    rec = record(generation=1)
    loaded = loaded_fingerprints(rec)
    rec = settled(rec, charon, loaded)
    assert rec.memory.active == 1

    # Heroku re-created the VPN: new keys for both tunnels (generation 2).
    rec = replace(rec, far_end=replace(rec.far_end, vpn=rotated(VPN), generation=2))
    plan = plan_pass(inputs(rec, charon=charon, loaded=loaded))
    assert [(type(a).__name__, getattr(a, "conn_name", None) or a.connection.tunnel(a.number).conn_name)
            for a in plan.setup] == [("LoadTunnel", T2), ("TerminateIke", T2)]
    assert plan.starting_over == {T2}
    new_t2 = next(a.fingerprint for a in plan.setup if isinstance(a, LoadTunnel))

    # Tunnel 2 is up on the new keys: traffic moves to it (make-before-break).
    loaded = {**loaded, T2: new_t2}
    (step,) = plan_pass(inputs(rec, charon=charon, loaded=loaded)).steps
    rec = replace(rec, memory=step.memory)
    plan = plan_pass(inputs(rec, charon=charon, loaded=loaded))
    assert plan.setup == ()
    (step,) = plan.steps
    assert step.failover is not None and step.failover.reason.kind is FailoverKind.ROLL
    assert step.memory.active == 2 and InitiateChild(T2) in step.charon_actions

    # Once tunnel 2 carries the traffic, tunnel 1 takes the new keys.
    rec = replace(rec, memory=step.memory)
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(False), T2: up(True)})
    rec = settled(rec, charon, loaded)
    plan = plan_pass(inputs(rec, charon=charon, loaded=loaded))
    assert [type(a) for a in plan.setup] == [LoadTunnel, TerminateIke]
    assert plan.setup[0].connection.tunnel(1).psk == Secret("k1.xxxxxxxx-new")
    assert plan.setup[1].conn_name == T1


def test_a_reordered_answer_loads_nothing():
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    rec = record(generation=1)
    loaded = loaded_fingerprints(rec)
    rec = settled(rec, charon, loaded)
    swapped = replace(VPN, tunnels=tuple(replace(t, number=3 - t.number) for t in reversed(VPN.tunnels)))
    far_end = far_end_after_answer(rec.far_end, VpnAnswer(ConnectionStatus.ACTIVE, "", swapped), 100.0, 1_800_000_000.0)
    plan = plan_pass(inputs(replace(rec, far_end=far_end), charon=charon, loaded=loaded))
    assert plan.setup == () and far_end.generation == 1


def test_a_connection_deleted_long_enough_is_unloaded():
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    rec = record(generation=1)
    loaded = loaded_fingerprints(rec)
    gone = replace(rec, far_end=replace(rec.far_end, gone_since=100.0 - 100, connection_status="deleted"))
    plan = plan_pass(inputs(gone, charon=charon, loaded=loaded))
    assert plan.setup == ()  # within forget_deleted_after: kept
    forgotten = replace(gone, far_end=replace(gone.far_end, gone_since=100.0 - 901))
    plan = plan_pass(inputs(forgotten, charon=charon, loaded=loaded))
    assert UnloadConn(T1) in plan.setup and UnloadConn(T2) in plan.setup
    assert TerminateIke(T1, "7") in plan.setup
    (step,) = plan.steps
    assert step.memory.verdict[0] is Health.DOWN and "unloaded" in step.memory.verdict[1]


TWO_CIDRS = ("172.16.0.0/16", "192.168.50.0/24")


def with_selectors(rec: ConnectionRecord, ike_version: int, selectors: TrafficSelectors) -> ConnectionRecord:
    vpn = replace(VPN, routable_cidrs=TWO_CIDRS, ike_version=ike_version)
    return replace(rec, settings=replace(rec.settings, selectors=selectors), far_end=replace(rec.far_end, vpn=vpn))


@pytest.mark.parametrize(("mode", "selectors"), [
    (Mode.POLICY, TrafficSelectors.CIDRS), (Mode.ROUTE, TrafficSelectors.CIDRS),
    (Mode.POLICY, TrafficSelectors.WIDE),  # mode: auto on a kernel without XFRM interfaces
])
def test_an_ikev1_answer_with_two_cidrs_is_not_loaded_with_only_the_first(mode, selectors):
    rec = with_selectors(record(mode), 1, selectors)
    plan = plan_pass(inputs(rec, charon=CharonState(True)))
    assert plan.setup == () and plan.reroutes == () and plan.probe_targets == ()
    (step,) = plan.steps
    assert (step.charon_actions, step.net_actions, step.memory.desired) == ((), (), None)
    problem = selector_problem(1, mode, TWO_CIDRS, selectors)
    assert step.memory.verdict == (Health.DOWN, problem)
    assert connection_selector_problem(rec) == problem


def test_what_an_earlier_answer_loaded_stays_while_the_new_one_is_refused():
    rec = record()
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    plan = plan_pass(inputs(with_selectors(rec, 1, TrafficSelectors.CIDRS), charon=charon,
                            loaded=loaded_fingerprints(rec)))
    assert plan.setup == () and plan.steps[0].charon_actions == ()


@pytest.mark.parametrize(("mode", "ike_version", "selectors", "child_ts"), [
    (Mode.POLICY, 2, TrafficSelectors.CIDRS, (TWO_CIDRS, ("10.0.0.0/16",))),
    (Mode.ROUTE, 2, TrafficSelectors.CIDRS, (TWO_CIDRS, ("10.0.0.0/16",))),
    (Mode.ROUTE, 1, TrafficSelectors.WIDE, (("0.0.0.0/0",), ("0.0.0.0/0",))),
])
def test_answers_whose_every_cidr_crosses_are_loaded(mode, ike_version, selectors, child_ts):
    rec = with_selectors(record(mode), ike_version, selectors)
    plan = plan_pass(inputs(rec, charon=CharonState(True)))
    loads = [a for a in plan.setup if isinstance(a, LoadTunnel)]
    assert [a.number for a in loads] == [1, 2]
    assert all(a.connection.child_ts == child_ts for a in loads)
    assert loads[0].connection.remote_ts == ("10.0.0.0/16",)  # what route mode routes into the tunnels


def test_a_refused_answer_keeps_the_previous_settings_running_and_managed():
    """IKEv1 with a second routable CIDR cannot be loaded as it is: what ran stays."""
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(True), T2: up(False)})
    rec = record(generation=1)
    loaded = loaded_fingerprints(rec)
    rec = settled(rec, charon, loaded)
    two = replace(VPN, routable_cidrs=("172.16.0.0/16", "192.168.50.0/24"))
    rec = replace(rec, far_end=replace(rec.far_end, vpn=two, generation=2))
    plan = plan_pass(inputs(rec, charon=charon, loaded=loaded))
    assert plan.setup == ()  # nothing reloaded with only the first selector
    (step,) = plan.steps
    health, summary = step.memory.verdict
    assert health is Health.DEGRADED and "not loaded" in summary and "192.168.50.0/24" in summary
    assert step.memory.running[1].routable_cidrs == ("172.16.0.0/16",)


def test_a_far_end_whose_cidrs_hold_our_own_address_or_the_apis_is_refused_and_what_runs_stays():
    """The answer is valid on its own; only with the config is it wrong: the space CIDR
    would swallow local_address, or a CIDR the Platform API's address."""
    running = record()
    loaded = loaded_fingerprints(running)
    charon = CharonState(True, conns=frozenset({T1, T2}), sas={T1: up(child=True), T2: up(child=False)})
    swallowing = replace(VPN, space_cidr_block="10.0.0.0/8")
    cases = [
        (replace(running.settings, local_address="10.9.0.1"),
         "space_cidr_block 10.0.0.0/8 holds local_address 10.9.0.1"),
        (replace(running.settings, api_address="172.16.3.4"),
         "routable_cidrs[0] 172.16.0.0/16 holds the API host 172.16.3.4"),
    ]
    for settings, expected in cases:
        far_end = running.far_end if settings.api_address else replace(running.far_end, vpn=swallowing)
        plan = plan_pass(inputs(ConnectionRecord(settings, far_end, running.memory), charon=charon, loaded=loaded))
        assert plan.setup == ()  # nothing loaded, unloaded or terminated
        (step,) = plan.steps
        assert step.charon_actions == () and step.net_actions == ()
        assert step.memory.verdict == (Health.DOWN, f"refused the far end's settings: {expected} (tunnels left as they are)")


def test_our_own_address_inside_our_own_routable_cidr_is_fine():
    """A gateway behind NAT often has its address in its own LAN."""
    rec = record()
    settings = replace(rec.settings, local_address="172.16.0.1")
    plan = plan_pass(inputs(ConnectionRecord(settings, rec.far_end, rec.memory), charon=CharonState(True)))
    assert [type(a) for a in plan.setup] == [LoadTunnel, LoadTunnel]
