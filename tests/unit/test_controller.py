"""The loop's decisions end to end, with a small in-memory charon instead of VICI:
messages in, charon calls and a Snapshot out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from agent.adapters.charon import CharonEvent, CharonUnavailable
from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.heroku import FetchResult
from agent.adapters.mss_clamp import MssClamp
from agent.adapters.route_socket import PreparedRoute
from agent.core.api_budget import poll_pace
from agent.core.netstate import Link, NetState
from agent.core.observation import CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.pace import TICK
from agent.core.payload import parse_vpn_answer, parse_vpn_connection
from agent.core.snapshot import Health
from agent.daemon.controller import Controller
from agent.daemon.edges import Edges
from agent.daemon.messages import ApiAnswer, ApiFailure, ApiPace, Reload, Stop

T1, T2 = "svpn-acme-space-office-t1", "svpn-acme-space-office-t2"
PSKS = ("first.Psk_value1", "second.Psk_value2")


def vpn_json(status: str = "active", psk1: str = PSKS[0]) -> dict:
    tunnel = {"customer_ip": "203.0.113.10", "status": "UP", "status_message": "",
              "last_status_change": "2026-11-28T10:00:00Z"}
    return {
        "id": "123456789012", "name": "office", "public_ip": "203.0.113.10",
        "routable_cidrs": ["172.16.0.0/16"], "space_cidr_block": "10.0.0.0/16", "ike_version": 1,
        "status": status, "status_message": "",
        "tunnels": [dict(tunnel, ip="198.51.100.1", pre_shared_key=psk1),
                    dict(tunnel, ip="198.51.100.2", pre_shared_key=PSKS[1])],
    }


class FakeCharon:
    """Answers like charon would, instantly: initiates succeed at once."""

    def __init__(self) -> None:
        self.reachable = True
        self.conns: set[str] = set()
        self.shared: set[str] = set()
        self.sas: dict[str, TunnelSas] = {}
        self.calls: list[tuple[str, str]] = []
        self._ids = iter(range(1, 10_000))

    def restart(self) -> None:
        """A restarted charon knows nothing of what was loaded."""
        self.__init__()

    def observe(self) -> CharonState:
        if not self.reachable:
            raise CharonUnavailable("socket gone")
        return CharonState(True, "5.9.8", frozenset(self.conns), frozenset(self.shared), dict(self.sas))

    def load_tunnel(self, conn, number) -> None:
        name = conn.tunnel(number).conn_name
        self.calls.append(("load", name))
        self.conns.add(name)
        self.shared.add(name)

    def unload_conn(self, name) -> None:
        self.calls.append(("unload", name))
        self.conns.discard(name)

    def unload_shared(self, shared_id) -> None:
        self.shared.discard(shared_id)

    def initiate(self, conn_name, *, child, timeout_ms) -> None:
        assert timeout_ms is not None
        self.calls.append(("initiate-child" if child else "initiate-ike", conn_name))
        children = (ChildSa(conn_name, str(next(self._ids)), "INSTALLED"),) if child else ()
        existing = self.sas.get(conn_name)
        if existing and existing.established_ike:
            ike = existing.established_ike
            children = ike.children + children
            self.sas[conn_name] = TunnelSas((IkeSa(conn_name, ike.uniqueid, "ESTABLISHED", children=children),))
        else:
            self.sas[conn_name] = TunnelSas((IkeSa(conn_name, str(next(self._ids)), "ESTABLISHED", children=children),))

    def tunnel_has_child(self, name) -> bool:
        return name in self.sas and self.sas[name].installed_child is not None

    def terminate_child(self, child_id, *, timeout_ms) -> None:
        self.calls.append(("terminate-child", child_id))
        for name, sas in self.sas.items():
            self.sas[name] = TunnelSas(tuple(
                IkeSa(sa.name, sa.uniqueid, sa.state, children=tuple(c for c in sa.children if c.uniqueid != child_id))
                for sa in sas.ike_sas))

    def terminate_ike(self, ike_id, *, timeout_ms) -> None:
        self.calls.append(("terminate-ike", ike_id))
        for name, sas in list(self.sas.items()):
            self.sas[name] = TunnelSas(tuple(sa for sa in sas.ike_sas if sa.uniqueid != ike_id))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "state_dir: state\ncontrol_socket: control.sock\n"
        "connections:\n  - {space: acme-space, vpn: office, local_address: 203.0.113.10}\n"
    )
    return path


def make_controller(config_file: Path, charon: FakeCharon, clock: Clock | None = None, links=None, reroute=None):
    from agent.config import load_config

    config = load_config(config_file)
    cache = ConnectionCache(Path(config.state_dir))
    edges = Edges(charon, links, MssClamp(nft="/bin/true") if links else None,
                  detect_local_address=lambda ip: "203.0.113.10", reroute=reroute)
    controller = Controller(
        config, edges, cache, rand=lambda: 0.5,
        route_unsupported=None if links else "the test kernel has no XFRM interfaces",
        reload_config=lambda: load_config(config_file),
        clock=clock or Clock(), wall=lambda: 1_800_000_000.0,
    )
    return controller, cache


def answer(raw: dict) -> ApiAnswer:
    return ApiAnswer("acme-space-office", FetchResult(parse_vpn_answer(raw), raw, '"etag"', 4499))


def test_nothing_is_loaded_before_the_api_answers(config_file):
    charon = FakeCharon()
    controller, _ = make_controller(config_file, charon)
    controller.reconcile_pass()
    assert charon.calls == []
    assert controller.snapshot.health is Health.DOWN
    assert controller.snapshot.ready


def test_an_answer_that_cannot_be_cached_is_used_and_status_says_so(config_file, monkeypatch, caplog):
    charon = FakeCharon()
    controller, cache = make_controller(config_file, charon)

    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cache, "save", full)
    with caplog.at_level("ERROR"):
        controller.handle(answer(vpn_json()))
        controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    assert ("load", T1) in charon.calls  # the tunnels run on the answer all the same
    (error,) = controller.snapshot.errors
    assert "No space left on device" in error and "state_dir" in error and "acme-space/office" in error
    assert caplog.text.count("cannot cache") == 1  # logged once while it lasts
    monkeypatch.undo()
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    assert controller.snapshot.errors == () and cache.load("acme-space", "office") is not None


def test_cold_start_loads_both_and_initiates_active_child_and_standby_ike(config_file):
    charon = FakeCharon()
    controller, cache = make_controller(config_file, charon)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    assert charon.calls == [("load", T1), ("load", T2), ("initiate-child", T1), ("initiate-ike", T2)]
    assert cache.load("acme-space", "office") is not None
    assert os.stat(cache.path("acme-space", "office")).st_mode & 0o777 == 0o600

    charon.calls.clear()
    controller.reconcile_pass()  # converged: a second pass does nothing
    assert charon.calls == []
    view = controller.snapshot.connections[0]
    assert view.health is Health.OK
    assert [(t.role, t.child_state) for t in view.tunnels] == [("active", "INSTALLED"), ("standby", "NONE")]


def test_api_failure_leaves_tunnels_alone_and_shows_in_status(config_file):
    charon = FakeCharon()
    controller, _ = make_controller(config_file, charon)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    charon.calls.clear()
    controller.handle(ApiFailure("acme-space-office", "auth", "acme-space/office: HTTP 401 unauthorized"))
    controller.reconcile_pass()
    assert charon.calls == []
    view = controller.snapshot.connections[0]
    assert view.api_error == "acme-space/office: HTTP 401 unauthorized"
    assert view.health is Health.OK


def test_a_provisioning_answer_is_not_a_desired_state(config_file):
    charon = FakeCharon()
    controller, _ = make_controller(config_file, charon)
    controller.handle(answer(vpn_json(status="provisioning")))
    controller.reconcile_pass()
    assert charon.calls == []
    assert "provisioning" in controller.snapshot.connections[0].summary


def test_psk_change_reloads_and_terminates_old_sas(config_file):
    charon = FakeCharon()
    clock = Clock()
    controller, _ = make_controller(config_file, charon, clock)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    clock.now += 2  # past the first backoff step
    old_ike = charon.sas[T1].established_ike.uniqueid
    charon.calls.clear()
    controller.handle(answer(vpn_json(psk1="rotated.Psk_value9")))
    controller.reconcile_pass()
    assert charon.calls[:2] == [("load", T1), ("terminate-ike", old_ike)]
    assert ("initiate-child", T1) in charon.calls
    assert ("load", T2) not in charon.calls


def test_charon_restart_reloads_everything(config_file):
    charon = FakeCharon()
    clock = Clock()
    controller, _ = make_controller(config_file, charon, clock)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    charon.reachable = False
    controller.reconcile_pass()
    assert not controller.snapshot.charon_reachable
    assert controller.snapshot.health is Health.DOWN

    charon.restart()
    clock.now += 2
    controller.reconcile_pass()
    assert charon.calls == [("load", T1), ("load", T2), ("initiate-child", T1), ("initiate-ike", T2)]


def test_failed_initiates_back_off(config_file):
    charon = FakeCharon()
    charon.initiate = lambda name, *, child, timeout_ms: charon.calls.append(("initiate", name))  # never comes up
    clock = Clock()
    controller, _ = make_controller(config_file, charon, clock)
    controller.handle(answer(vpn_json()))
    tries = []
    for _ in range(40):  # 40 passes, 0.5 s apart: 20 s
        controller.reconcile_pass()
        tries.append(sum(1 for call in charon.calls if call == ("initiate", T1)))
        clock.now += 0.5
    # attempts at 0 s, then after 1, 2, 4 s, then every 5 s (the cap; jitter 0.5 ->
    # factor 1.0): at 0, 1, 3, 7, 12 and 17 s
    assert tries[-1] == 6


def test_invalid_reload_keeps_the_running_config(config_file):
    charon = FakeCharon()
    controller, _ = make_controller(config_file, charon)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    config_file.write_text(config_file.read_text().replace("office", "office, mode: sideways"))
    controller.handle(Reload())
    controller.reconcile_pass()
    assert "mode" in controller.snapshot.errors[0]
    assert controller.snapshot.connections[0].health is Health.OK


def test_stop_ends_the_loop(config_file):
    controller, _ = make_controller(config_file, FakeCharon())
    assert controller.handle(Stop()) is False
    controller.post(Stop())
    assert controller.run() == 0


def drain(controller, command: str, tunnel: int, connection: str | None = None):
    import queue

    from agent.daemon.messages import ControlRequest

    reply: queue.SimpleQueue = queue.SimpleQueue()
    controller.handle(ControlRequest(command, {"tunnel": tunnel, "connection": connection}, reply))
    return reply.get_nowait()


def test_drain_moves_traffic_make_before_break_and_records_the_failover(config_file):
    charon = FakeCharon()
    clock = Clock()
    controller, _ = make_controller(config_file, charon, clock)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    old_child = charon.sas[T1].installed_child.uniqueid
    charon.calls.clear()

    assert drain(controller, "drain", 1) == (True, {"connection": "acme-space/office", "tunnel": 1, "drained": [1]})
    controller.reconcile_pass()
    # the standby's child first; the old child goes once the new one is installed
    assert charon.calls[0] == ("initiate-child", T2)
    controller.reconcile_pass()
    assert ("terminate-child", old_child) in charon.calls
    view = controller.snapshot.connections[0]
    assert [(t.number, t.role, t.drained) for t in view.tunnels] == [(1, "standby", True), (2, "active", False)]
    assert [(f.from_tunnel, f.to_tunnel, f.reason, f.kind) for f in view.failovers] == [
        (1, 2, "drained by the operator", "drain")]
    assert view.failover_counts == {"drain": 1}

    assert drain(controller, "drain", 2) == (False, "tunnel 1 is drained already: draining both would leave "
                                                    "traffic nowhere to go; `agentctl undrain 1` first")
    assert drain(controller, "undrain", 1)[0] is True
    assert drain(controller, "drain", 3) == (False, "tunnel must be 1 or 2, got 3")
    assert drain(controller, "drain", 1, "other/vpn") == (False, "no connection other/vpn "
                                                                 "(configured: acme-space/office)")


@pytest.mark.parametrize("args, error", [
    ([1], "arguments must be an object, got list"),
    ({"tunnel": True}, "tunnel must be 1 or 2, got True"),
    ({"tunnel": 1, "connection": ["acme-space/office"]}, "connection must be a name such as SPACE/VPN, got list"),
])
def test_a_bad_control_request_is_answered_not_raised(config_file, args, error):
    """The server checks first; the loop still answers (never raises) whatever it gets."""
    import queue

    from agent.daemon.messages import ControlRequest

    controller, _ = make_controller(config_file, FakeCharon())
    controller.handle(answer(vpn_json()))
    reply: queue.SimpleQueue = queue.SimpleQueue()
    controller.handle(ControlRequest("drain", args, reply, "pid 812, uid 0"))
    assert reply.get_nowait() == (False, error)
    assert controller.state.records["acme-space-office"].memory.drained == frozenset()


def test_the_log_says_who_drained(config_file, caplog):
    import queue

    from agent.daemon.messages import ControlRequest

    controller, _ = make_controller(config_file, FakeCharon())
    controller.handle(answer(vpn_json()))
    reply: queue.SimpleQueue = queue.SimpleQueue()
    with caplog.at_level(logging.WARNING):
        controller.handle(ControlRequest("drain", {"tunnel": 2}, reply, "pid 812, uid 0"))
    assert reply.get_nowait()[0] is True
    assert "acme-space/office: tunnel 2 drained by the operator (pid 812, uid 0)" in caplog.messages


def test_peer_delete_of_the_active_tunnel_fails_over_at_once(config_file):
    charon = FakeCharon()
    clock = Clock()
    controller, _ = make_controller(config_file, charon, clock)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    controller.reconcile_pass()  # sees both tunnels up
    charon.sas.pop(T1)  # the space side sent DELETE: the IKE SA and its child are gone
    charon.calls.clear()
    controller.reconcile_pass()
    assert charon.calls[0] == ("initiate-child", T2)  # no grace once it had been up
    view = controller.snapshot.connections[0]
    assert [(f.from_tunnel, f.to_tunnel, f.reason, f.kind) for f in view.failovers] == [(1, 2, "IKE SA down", "down")]
    clock.now += 2
    controller.reconcile_pass()
    assert ("initiate-ike", T1) in charon.calls  # and tunnel 1 comes back as the standby


@pytest.mark.parametrize("our_clock_ahead_s, down_ago_s, fails_over", [
    (3600, 10, True),  # DOWN 10 s ago, our SA is 60 s old: current, though our clock is an hour ahead
    (-3600, 120, False),  # DOWN 120 s ago, before our SA: stale, though our clock is an hour behind
], ids=["ahead-current-down", "behind-stale-down"])
def test_a_down_is_judged_on_herokus_clock_not_ours(config_file, our_clock_ahead_s, down_ago_s, fails_over):
    """Heroku's DOWN timestamps are compared with our SA's age on Heroku's own clock (the
    Date of its answer): a stepped or wrong wall clock on the gateway changes nothing."""
    from datetime import datetime, timezone

    charon, clock = FakeCharon(), Clock()
    controller, _ = make_controller(config_file, charon, clock)
    heroku_time = 1_800_000_000.0 - our_clock_ahead_s  # make_controller's wall clock reads 1_800_000_000
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    controller.reconcile_pass()
    ike = charon.sas[T1].established_ike
    charon.sas[T1] = TunnelSas((IkeSa(T1, ike.uniqueid, "ESTABLISHED", established=60, children=ike.children),))
    raw = vpn_json()
    stamp = datetime.fromtimestamp(heroku_time - down_ago_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    raw["tunnels"][0].update(status="DOWN", last_status_change=stamp)
    controller.handle(ApiAnswer("acme-space-office", FetchResult(parse_vpn_answer(raw), raw, '"down"', 4498,
                                                                 heroku_clock=heroku_time - clock.now)))
    controller.reconcile_pass()
    view = controller.snapshot.connections[0]
    assert [(f.from_tunnel, f.to_tunnel, f.kind) for f in view.failovers] == ([(1, 2, "telemetry")] if fails_over else [])


def test_show_config_hides_secrets(config_file):
    controller, _ = make_controller(config_file, FakeCharon())
    ok, shown = drain(controller, "show-config", 0)
    assert ok and shown["connections"][0]["space"] == "acme-space"
    assert "token" not in repr(shown).replace("token_file", "")


def test_updown_events_say_up_or_down_and_name_the_sas():
    from agent.adapters.charon import event_from

    assert event_from("child-updown", {"up": b"yes", T1: {}}) == CharonEvent("child-updown", (T1,), True)
    assert event_from("child-updown", {T2: {}}) == CharonEvent("child-updown", (T2,), False)
    down = {T2: {"uniqueid": b"2", "child-sas": {"t2-7": {"uniqueid": b"7", "state": b"DELETING"}}}}
    assert event_from("child-updown", down) == CharonEvent("child-updown", (T2,), False, ("7",))


class FakeLinks:
    """Interfaces appear when ensured; routes are recorded, never shown (so every pass
    wants to write them: the fast reroute guard must hold such writes back)."""

    def __init__(self) -> None:
        self.routes: list[tuple] = []
        self.links: dict[str, Link] = {}

    def observe(self):
        return NetState(links=dict(self.links), addresses=("172.16.0.2",))

    def ensure_interface(self, name, if_id, mtu) -> None:
        self.links[name] = Link(name, 10 + len(self.links), "xfrm", if_id, mtu, True)

    def remove_interface(self, name) -> None:
        self.links.pop(name, None)

    def set_route(self, dst, ifname, metric, src) -> None:
        self.routes.append((dst, ifname, metric))

    def delete_route(self, dst, ifname, metric) -> None:
        pass


class FakeRouteSocket:
    """Records what the fast reroute sends, as (dst, ifname, metric)."""

    def __init__(self) -> None:
        self.routes: list[tuple] = []
        self._prepared: dict[int, tuple] = {}

    def prepare(self, dst, ifname, ifindex, metric, src):
        sequence = len(self._prepared) + 1
        self._prepared[sequence] = (dst, ifname, metric)
        return PreparedRoute(f"route {dst} dev {ifname} metric {metric}", sequence, b"")

    def send(self, routes) -> list[str]:
        self.routes += [self._prepared[route.sequence] for route in routes]
        return []


def use_route_mode(config_file) -> None:
    config_file.write_text(config_file.read_text().replace("local_address: 203.0.113.10",
                                                          "local_address: 203.0.113.10, mode: route"))


def route_mode_controller(config_file):
    from agent.daemon.fast_reroute import FastReroute

    use_route_mode(config_file)
    charon, links, reroute_links = FakeCharon(), FakeLinks(), FakeRouteSocket()
    reroute = FastReroute(reroute_links)
    controller, _ = make_controller(config_file, charon, links=links, reroute=reroute)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    controller.reconcile_pass()
    return controller, charon, links, reroute, reroute_links


def test_route_mode_fast_reroute_moves_the_route_as_soon_as_the_active_child_goes(config_file):
    _, _, _, reroute, reroute_links = route_mode_controller(config_file)
    reroute.on_event(CharonEvent("child-updown", (T2,), False))  # the standby's child: nothing moves
    assert reroute_links.routes == []
    reroute.on_event(CharonEvent("child-updown", (T1,), False))  # the active one: move at once
    assert [(dst, ifname.endswith("-2"), metric) for dst, ifname, metric in reroute_links.routes] == [
        ("10.0.0.0/16", True, 100)]
    reroute.on_event(CharonEvent("child-updown", (T1,), False))  # fired once, until the loop arms again
    assert len(reroute_links.routes) == 1


def test_a_pass_planned_before_a_fast_reroute_does_not_undo_it(config_file):
    controller, charon, links, reroute, reroute_links = route_mode_controller(config_file)
    links.routes.clear()
    # The reroute fires while a pass runs on facts from before it: the pass writes no route.
    original_observe = charon.observe

    def observe_then_reroute():
        state = original_observe()
        reroute.on_event(CharonEvent("child-updown", (T1,), False))
        charon.sas.pop(T1)  # what charon says from now on
        return state

    charon.observe = observe_then_reroute
    controller.reconcile_pass()  # FakeLinks shows no routes, so this pass wants to write them all
    assert len(reroute_links.routes) == 1 and links.routes == []
    charon.observe = original_observe
    controller.reconcile_pass()  # the next pass sees tunnel 1 gone and records the failover
    view = controller.snapshot.connections[0]
    assert [t.role for t in view.tunnels][1] == "active"
    assert [(f.from_tunnel, f.to_tunnel) for f in view.failovers] == [(1, 2)]
    assert [(ifname[-2:], metric) for _, ifname, metric in links.routes] == [("-2", 100)]


def test_a_child_the_pass_closes_itself_does_not_fire_the_reroute_while_its_successor_carries(config_file):
    """A selector roll on the active tunnel: the pass that closes the old child arms its
    reroute first, knowing the successor; the old child's down event then moves nothing
    (armed after, the plan of the pass before, which knew only the old child, fired)."""
    controller, charon, _, reroute, reroute_links = route_mode_controller(config_file)
    local, remote = controller.state.records["acme-space-office"].memory.desired.tunnel(1).child_ts
    old = ChildSa(T1, "old", "INSTALLED", local_ts=("192.168.99.0/24",), remote_ts=remote)
    ike = charon.sas[T1].established_ike
    charon.sas[T1] = TunnelSas((IkeSa(T1, ike.uniqueid, "ESTABLISHED", children=(old,)),))
    controller.reconcile_pass()  # its successor is initiated (the fake installs it at once)
    assert ("initiate-child", T1) in charon.calls and len(charon.sas[T1].children) == 2
    close = charon.terminate_child

    def close_and_report(child_id, *, timeout_ms):
        close(child_id, timeout_ms=timeout_ms)
        reroute.on_event(CharonEvent("child-updown", (T1,), False, (child_id,)))  # as charon's event thread

    charon.terminate_child = close_and_report
    controller.reconcile_pass()
    assert ("terminate-child", "old") in charon.calls
    assert reroute_links.routes == [] and reroute.fired == 0
    assert [t.role for t in controller.snapshot.connections[0].tunnels] == ["active", "standby"]


def test_route_mode_start_waits_for_the_first_child_of_the_active_tunnel(config_file):
    """IKEv1: tunnel 1's IKE SA is up a Quick Mode before its CHILD_SA, and tunnel 2 may
    finish first: that is no reason to fail over at start, only after STARTUP_GRACE."""
    from agent.core.failover import STARTUP_GRACE

    use_route_mode(config_file)
    charon, clock = FakeCharon(), Clock()
    quick_mode_pending = charon.initiate

    def initiate(name, *, child, timeout_ms):
        quick_mode_pending(name, child=child and name != T1, timeout_ms=timeout_ms)

    charon.initiate = initiate
    controller, _ = make_controller(config_file, charon, clock=clock, links=FakeLinks())
    controller.handle(answer(vpn_json()))
    for _ in range(3):
        controller.reconcile_pass()
        clock.now += 1
    assert charon.tunnel_has_child(T2) and not charon.tunnel_has_child(T1)
    assert [t.role for t in controller.snapshot.connections[0].tunnels] == ["active", "standby"]
    clock.now += STARTUP_GRACE
    controller.reconcile_pass()
    assert [t.role for t in controller.snapshot.connections[0].tunnels] == ["standby", "active"]


def test_after_charon_went_away_the_tunnels_start_over_with_the_startup_grace(config_file):
    """Both tunnels come back from scratch; tunnel 2 finishing first is no failover."""
    from agent.adapters.charon import CharonDisconnected

    charon, clock = FakeCharon(), Clock()
    controller, _ = make_controller(config_file, charon, clock=clock)
    controller.handle(answer(vpn_json()))
    for _ in range(3):
        controller.reconcile_pass()
        clock.now += 20  # long past the start-up grace
    assert [t.role for t in controller.snapshot.connections[0].tunnels] == ["active", "standby"]

    charon.restart()
    controller.handle(CharonDisconnected("socket closed"))
    tunnel_2_first = charon.initiate
    charon.initiate = lambda name, *, child, timeout_ms: None if name == T1 else tunnel_2_first(
        name, child=child, timeout_ms=timeout_ms)
    for _ in range(3):
        controller.reconcile_pass()
        clock.now += 1
    assert charon.sas[T2].established_ike is not None and T1 not in charon.sas
    assert [t.role for t in controller.snapshot.connections[0].tunnels] == ["active", "standby"]
    assert controller.snapshot.connections[0].failovers == ()


def test_the_pollers_pace_is_published_and_a_reload_clears_it(config_file, caplog):
    controller, _ = make_controller(config_file, FakeCharon())
    controller.reconcile_pass()
    assert controller.snapshot.api_budget is None  # no round yet
    with caplog.at_level(logging.INFO, logger="agent.daemon.loop_state"):
        controller.handle(ApiPace(poll_pace(30.0, 212)))
        controller.handle(ApiPace(poll_pace(30.0, 150)))  # still low: said once
        controller.reconcile_pass()
        budget = controller.snapshot.api_budget
        assert (budget.remaining, budget.stretched, round(budget.poll_interval), budget.base_interval) == (
            150, True, 53, 30.0)
        controller.handle(ApiPace(poll_pace(30.0, 3000)))
    low = [r.getMessage() for r in caplog.records if "budget low" in r.getMessage()]
    assert low == ["Platform API budget low: 212 calls left in the token's pool (shared with its owner's other "
                   "tools); polling every 38 s instead of 30 s until it refills"]
    assert any("budget recovered (3000 calls left); polling every 30 s again" in r.getMessage()
               for r in caplog.records)
    controller.handle(Reload())
    controller.reconcile_pass()
    assert controller.snapshot.api_budget is None


def test_an_ikev1_answer_with_two_cidrs_is_refused_in_status_and_logged_once(config_file, caplog):
    charon = FakeCharon()
    controller, _ = make_controller(config_file, charon)
    two_cidrs = dict(vpn_json(), routable_cidrs=["172.16.0.0/16", "192.168.50.0/24"])
    controller.handle(answer(two_cidrs))
    with caplog.at_level("INFO", logger="agent.daemon.controller"):
        controller.reconcile_pass()
        controller.reconcile_pass()
    assert charon.calls == []  # never loaded with only the first selector
    view = controller.snapshot.connections[0]
    assert view.health is Health.DOWN
    assert "only 172.16.0.0/16 would cross the tunnel, not 192.168.50.0/24" in view.summary
    refusals = [r for r in caplog.records if "IKEv1 negotiates only the first traffic selector" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelname == "ERROR"
    assert refusals[0].getMessage().startswith("acme-space/office: ")

    caplog.clear()
    controller.handle(answer(dict(two_cidrs, ike_version=2)))  # the VPN switched to IKEv2
    with caplog.at_level("INFO", logger="agent.daemon.controller"):
        controller.reconcile_pass()
    assert charon.calls[:2] == [("load", T1), ("load", T2)]
    assert any("every routable CIDR can cross" in r.getMessage() for r in caplog.records)


def test_the_configured_traffic_selectors_reach_the_decisions(tmp_path):
    from agent.config import parse_config
    from agent.core.selectors import TrafficSelectors
    from agent.daemon.loop_state import settings_for

    config = parse_config({"connections": [{"space": "acme-space", "vpn": "office", "mode": "route",
                                             "traffic_selectors": "wide"}]}, base_dir=tmp_path)
    settings = settings_for(config.connections[0], config, route_unsupported=None)
    assert settings.selectors is TrafficSelectors.WIDE


def test_a_step_moves_routes_before_charon_tears_anything_down():
    """A failover's route move must not wait behind a terminate (a dead peer's DELETE)."""
    from agent.core.charon_objects import TerminateIke
    from agent.core.decide import ConnectionStep
    from agent.core.memory import ConnectionMemory
    from agent.core.route_mode import SetRoute
    from agent.daemon.edges import Edges, Outcomes

    order: list[str] = []
    charon, links = FakeCharon(), FakeLinks()
    charon.terminate_ike = lambda ike_id, *, timeout_ms: order.append(f"terminate {ike_id} ({timeout_ms} ms)")
    links.set_route = lambda dst, ifname, metric, src: order.append(f"route {dst} {ifname} {metric}")
    edges = Edges(charon, links, None, detect_local_address=lambda ip: None)
    step = ConnectionStep("k", "acme/office", ConnectionMemory(), None, (TerminateIke(T1, "7"),),
                          (SetRoute("10.0.0.0/16", "svoffice-2", 100, None),))
    edges.apply_step(step, 0, Outcomes())
    assert order == ["route 10.0.0.0/16 svoffice-2 100", "terminate 7 (-1 ms)"]


def test_keepalived_s_notify_is_refused_without_ha_and_acted_on_with_it(config_file):
    import queue

    from agent.daemon.messages import ControlRequest

    def ha(controller, state):
        reply: queue.SimpleQueue = queue.SimpleQueue()
        controller.handle(ControlRequest("ha", {"state": state}, reply))
        return reply.get_nowait()

    charon = FakeCharon()
    controller, _ = make_controller(config_file, charon)
    assert ha(controller, "backup") == (False, "ha is not enabled in the config (ha: {enabled: true})")

    config_file.write_text("ha: {enabled: true}\n" + config_file.read_text())
    controller, _ = make_controller(config_file, charon)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()  # no link adapter here: no address seen, a backup
    assert controller.snapshot.ha.state == "backup" and controller.snapshot.ha.keepalived is None
    assert not any(call[0].startswith("initiate") for call in charon.calls)
    assert ha(controller, "master") == (True, {"state": "master"})
    controller.reconcile_pass()  # keepalived says master, but the address is not here yet
    (conn,) = controller.snapshot.connections
    assert (conn.ha, controller.snapshot.ha.keepalived) == ("backup", "master")
    assert "not on this node yet" in conn.ha_reason
    assert ha(controller, "standby") == (False, "state must be one of master, backup, fault")


class SteppingClock(Clock):
    """Every look at the clock finds it `step` seconds later: a pass that looks at it
    twice (start and end) takes `step`."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_snapshot_says_how_long_the_last_pass_took_on_the_loops_clock(config_file):
    clock = SteppingClock(0.25)
    controller, _ = make_controller(config_file, FakeCharon(), clock)
    assert controller.snapshot.pass_seconds is None  # no pass yet
    controller.handle(answer(vpn_json()))
    looks = clock.now
    controller.reconcile_pass()
    looked = round((clock.now - looks) / clock.step)
    # The pass's first look at the clock to one of its later looks (the snapshot built
    # after the pass looks too).
    spans = [clock.step * n for n in range(1, looked)]
    assert any(controller.snapshot.pass_seconds == pytest.approx(span) for span in spans), (
        controller.snapshot.pass_seconds, spans)
    assert controller.snapshot.pass_seconds > 0
    assert controller.snapshot.to_dict()["pass_seconds"] == controller.snapshot.pass_seconds


def many_connections(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "agent.yaml"
    lines = [f"  - {{space: acme-space, vpn: office{n}, local_address: 203.0.113.10}}" for n in range(count)]
    path.write_text("state_dir: state\ncontrol_socket: control.sock\nconnections:\n" + "\n".join(lines) + "\n")
    return path


def converged(tmp_path: Path, count: int, clock: Clock):
    from agent.core.health import ProbeResult  # noqa: F401 (the messages the tests post)

    charon = FakeCharon()
    controller, _ = make_controller(many_connections(tmp_path, count), charon, clock)
    passes = []
    controller._on_pass = passes.append
    for n in range(count):
        raw = vpn_json()
        raw["name"] = f"office{n}"
        for number, tunnel in enumerate(raw["tunnels"], start=1):
            tunnel["ip"] = f"198.51.100.{2 * n + number}"
        controller.handle(ApiAnswer(f"acme-space-office{n}", FetchResult(parse_vpn_answer(raw), raw, '"e"', 4499)))
    controller.reconcile_pass()
    clock.now += 2
    controller.reconcile_pass()
    assert all(c.health is Health.OK for c in controller.snapshot.connections)
    passes.clear()
    return controller, passes


def probe(n: int, ok: bool, at: float):
    from agent.core.health import ProbeResult

    return ProbeResult(f"acme-space-office{n}", 1, ok, 0.01 if ok else None, at)


@pytest.mark.parametrize("count", [5, 50])
def test_answered_probes_of_healthy_tunnels_wait_for_the_tick_so_passes_do_not_grow_with_connections(
        tmp_path, count):
    """One answered probe per connection every 0.1 s, one loop turn per message: the
    passes stay one per tick whatever the number of connections (a pass per message made
    each second of N connections cost N x 10 passes of N connections each)."""
    clock = Clock()
    controller, passes = converged(tmp_path, count, clock)
    turns = 0
    for _ in range(20):  # two seconds, every connection probed twenty times
        clock.now += 0.1
        for n in range(count):
            controller.post(probe(n, True, clock.now))
            assert controller.round() is None
            turns += 1
    assert turns == 20 * count
    assert 1 <= len(passes) <= 3  # the ticks, not the messages
    clock.now += 1.0
    controller.round()
    view = controller.snapshot.connections[count - 1]
    assert view.tunnels[0].probe_sent == 20  # every result counted all the same


def test_a_lost_probe_a_charon_event_and_a_new_answer_each_get_a_pass_at_once(tmp_path):
    clock = Clock()
    controller, passes = converged(tmp_path, 3, clock)
    controller.post(probe(1, False, clock.now))
    controller.round()
    assert len(passes) == 1
    controller.post(probe(1, True, clock.now))  # the answer after a loss: the count of losses goes back to 0
    controller.round()
    assert len(passes) == 2
    controller.post(CharonEvent("child-updown", ("svpn-acme-space-office2-t1",), up=False))
    controller.round()
    assert len(passes) == 3
    raw = vpn_json(psk1="rotated.Psk_value9")
    raw["name"] = "office0"
    controller.post(ApiAnswer("acme-space-office0", FetchResult(parse_vpn_answer(raw), raw, '"f"', 4498)))
    controller.round()
    assert len(passes) == 4
    controller.post(ApiAnswer("acme-space-office0", FetchResult(None, None, '"f"', 4497)))  # 304: waits
    controller.round()
    assert len(passes) == 4
    clock.now += 1.0  # the tick: a turn with nothing waiting passes
    assert controller.round() is None
    assert len(passes) == 5


def test_a_pass_that_raises_is_tried_again_at_the_tick_not_in_a_spin(tmp_path):
    clock = Clock()
    controller, passes = converged(tmp_path, 1, clock)
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("boom")

    controller._edges.observe_charon = broken
    clock.now += 1.0
    controller.round()
    controller.round()  # due again only a tick later: no second try yet
    assert len(calls) == 1
    assert "reconcile pass failed" in controller.snapshot.errors[-1]
    clock.now += 1.0
    controller.round()
    assert len(calls) == 2


def test_the_snapshot_counts_passes_and_says_when_the_loop_looks_next(config_file):
    clock = SteppingClock(0.01)
    controller, _ = make_controller(config_file, FakeCharon(), clock)
    assert (controller.snapshot.passes, controller.snapshot.next_pass_seconds) == (0, None)
    controller.handle(answer(vpn_json()))
    controller.reconcile_pass()
    controller.reconcile_pass()
    assert controller.snapshot.passes == 2
    # Tunnels being brought up are no steady state: the loop looks again within the second.
    assert controller.snapshot.next_pass_seconds == TICK
    assert controller.snapshot.to_dict()["next_pass_seconds"] == TICK
