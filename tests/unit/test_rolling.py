"""Settings rolls: the tunnel that carries no traffic takes new settings first, traffic
moves once it is up on them, then the other follows; both at once only without traffic."""

from __future__ import annotations

from hypothesis import given, strategies as st

from agent.core.failover import TunnelHealth
from agent.core.model import Secret
from agent.core.rolling import TunnelSettings, plan_roll

OLD = {n: TunnelSettings(1, f"198.51.100.{n}", Secret(f"old{n}"), 1, ("172.16.0.0/16",), "10.0.0.0/16")
       for n in (1, 2)}
NEW = {n: TunnelSettings(2, f"198.51.100.{n}", Secret(f"new{n}"), 1, ("172.16.0.0/16",), "10.0.0.0/16")
       for n in (1, 2)}
CARRYING = TunnelHealth(usable=True, carrying=True)
STANDBY = TunnelHealth(usable=True)
NOT_UP = TunnelHealth(usable=True, up=False)


def test_nothing_to_roll():
    relabelled = {n: TunnelSettings(2, s.ip, s.psk, 1, s.routable_cidrs, s.space_cidr_block) for n, s in OLD.items()}
    plan = plan_roll(relabelled, OLD, 1, {1: CARRYING, 2: STANDBY}, route_mode=False)
    assert plan.settings == relabelled and plan.retiring is None
    assert plan_roll(NEW, {}, None, {}, route_mode=False).settings == NEW  # a cold start takes what is published


def test_the_standby_goes_first_and_the_active_keeps_its_settings():
    plan = plan_roll(NEW, OLD, 1, {1: CARRYING, 2: STANDBY}, route_mode=False)
    assert plan.settings == {1: OLD[1], 2: NEW[2]} and plan.retiring is None


def test_traffic_moves_once_the_standby_is_up_on_the_new_settings():
    running = {1: OLD[1], 2: NEW[2]}
    assert plan_roll(NEW, running, 1, {1: CARRYING, 2: NOT_UP}, route_mode=False).retiring is None
    plan = plan_roll(NEW, running, 1, {1: CARRYING, 2: STANDBY}, route_mode=False)
    assert plan.settings == running and plan.retiring == 1


def test_right_after_a_move_the_old_child_carries_until_the_new_one_is_installed():
    """Policy mode: make-before-break. The old active keeps its child (and its old
    settings) until the new active's child is in; only then does it take the new ones."""
    running = {1: OLD[1], 2: NEW[2]}
    plan = plan_roll(NEW, running, 2, {1: CARRYING, 2: STANDBY}, route_mode=False)
    assert plan.settings == running and plan.retiring is None


def test_route_mode_rolls_the_standby_although_it_holds_a_child():
    plan = plan_roll(NEW, OLD, 1, {1: CARRYING, 2: CARRYING}, route_mode=True)
    assert plan.settings == {1: OLD[1], 2: NEW[2]}
    plan = plan_roll(NEW, {1: OLD[1], 2: NEW[2]}, 1, {1: CARRYING, 2: CARRYING}, route_mode=True)
    assert plan.retiring == 1
    plan = plan_roll(NEW, {1: OLD[1], 2: NEW[2]}, 2, {1: CARRYING, 2: CARRYING}, route_mode=True)
    assert plan.settings == NEW  # the route has moved: tunnel 1 follows


def test_then_the_old_active_follows():
    plan = plan_roll(NEW, {1: OLD[1], 2: NEW[2]}, 2, {1: STANDBY, 2: CARRYING}, route_mode=False)
    assert plan.settings == NEW and plan.retiring is None


def test_both_at_once_only_without_traffic():
    assert plan_roll(NEW, OLD, 1, {1: STANDBY, 2: STANDBY}, route_mode=False).settings == NEW
    broken = TunnelHealth(usable=True, carrying=True, healthy=False)
    assert plan_roll(NEW, OLD, 1, {1: broken, 2: STANDBY}, route_mode=False).settings == NEW


def test_a_change_of_the_active_alone_waits_for_the_move():
    target = {1: NEW[1], 2: OLD[2]}
    plan = plan_roll(target, OLD, 1, {1: CARRYING, 2: STANDBY}, route_mode=False)
    assert plan.settings == OLD and plan.retiring == 1


health = st.sampled_from([CARRYING, STANDBY, NOT_UP, TunnelHealth(usable=False, up=False)])


@given(st.sampled_from([None, 1, 2]), health, health, st.booleans(), st.booleans(), st.booleans())
def test_never_both_old_and_carrying_tunnel_changed_together(active, h1, h2, stale1, stale2, route):
    running = {1: OLD[1] if stale1 else NEW[1], 2: OLD[2] if stale2 else NEW[2]}
    plan = plan_roll(NEW, running, active, {1: h1, 2: h2}, route_mode=route)
    changed = {n for n in (1, 2) if not plan.settings[n].same_as(running[n])}
    healths = {1: h1, 2: h2}
    for n in (1, 2):
        carries = healths[n].carrying and healths[n].can_carry and (not route or n == active)
        if carries:
            assert n not in changed  # a tunnel with traffic never changes under it
    assert all(plan.settings[n] in (running[n], NEW[n]) for n in (1, 2))
    if plan.retiring is not None:
        assert plan.retiring == active and plan.settings[3 - active].same_as(NEW[3 - active])


def test_route_mode_takes_new_selectors_on_both_tunnels_at_once():
    """Each tunnel replaces its CHILD_SA under the same IKE SA (core/selector_roll):
    no route move, nothing to wait for."""
    cidrs = {n: TunnelSettings(2, s.ip, s.psk, 1, ("172.16.0.0/16", "172.17.0.0/16"), s.space_cidr_block)
             for n, s in OLD.items()}
    plan = plan_roll(cidrs, OLD, 1, {1: CARRYING, 2: CARRYING}, route_mode=True)
    assert plan.settings == cidrs and plan.retiring is None
    # Policy mode still rolls one tunnel at a time, and so does a new PSK in route mode.
    assert plan_roll(cidrs, OLD, 1, {1: CARRYING, 2: STANDBY}, route_mode=False).settings == {1: OLD[1], 2: cidrs[2]}
    assert plan_roll(NEW, OLD, 1, {1: CARRYING, 2: CARRYING}, route_mode=True).settings == {1: OLD[1], 2: NEW[2]}
