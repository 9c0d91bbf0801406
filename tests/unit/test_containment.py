"""One connection that cannot be planned or applied stays alone with its trouble: logged by
name, counted, said in its verdict, its tunnels left as they are, while the other
connection of the same config is planned and applied as usual; the loop goes on and says
it is alive (the systemd watchdog) whatever its passes come to."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from vici.protocol import Message

from agent.adapters import charon_messages
from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.heroku import FetchResult
from agent.adapters.mss_clamp import MssClamp
from agent.adapters.route_socket import ipv4_network
from agent.core import pass_plan
from agent.core.model import Secret
from agent.core.payload import parse_vpn_answer
from agent.core.snapshot import Health
from agent.daemon.controller import Controller
from agent.daemon.edges import Edges
from agent.daemon.fast_reroute import FastReroute
from agent.daemon.messages import ApiAnswer, Stop
from tests.unit.test_controller import Clock, FakeCharon, FakeLinks, FakeRouteSocket, vpn_json
from tests.unit.test_metrics import exposition, samples

OFFICE, LAB = "acme-space-office", "acme-space-lab"
OFFICE_T1, LAB_T1 = "svpn-acme-space-office-t1", "svpn-acme-space-lab-t1"


class EncodingCharon(FakeCharon):
    """Serialises each load like the vici library does before anything is sent: a value
    too long for VICI's 16-bit length raises struct.error, as it would on a gateway."""

    def load_tunnel(self, conn, number) -> None:
        Message.serialize(charon_messages.load_shared_message(conn, number))
        Message.serialize(charon_messages.load_conn_message(conn, number))
        super().load_tunnel(conn, number)


class EncodingLinks(FakeLinks):
    def set_route(self, dst, ifname, metric, src) -> None:
        ipv4_network(dst)  # what LinkManager checks before pyroute2 guesses a family
        super().set_route(dst, ifname, metric, src)


class EncodingRouteSocket(FakeRouteSocket):
    def prepare(self, dst, ifname, ifindex, metric, src):
        ipv4_network(dst)
        return super().prepare(dst, ifname, ifindex, metric, src)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "state_dir: state\ncontrol_socket: control.sock\nconnections:\n"
        "  - {space: acme-space, vpn: office, local_address: 203.0.113.10}\n"
        "  - {space: acme-space, vpn: lab, local_address: 203.0.113.10}\n"
    )
    return path


def make(config_file: Path, charon, *, links=None, reroute=None, on_alive=lambda: None) -> Controller:
    from agent.config import load_config

    config = load_config(config_file)
    edges = Edges(charon, links, MssClamp(nft="/bin/true") if links else None,
                  detect_local_address=lambda ip: "203.0.113.10", reroute=reroute)
    return Controller(config, edges, ConnectionCache(Path(config.state_dir)), rand=lambda: 0.5,
                      route_unsupported=None if links else "the test kernel has no XFRM interfaces",
                      reload_config=lambda: load_config(config_file), clock=Clock(), wall=lambda: 1_800_000_000.0,
                      on_alive=on_alive)


def answer(key: str, vpn: str, *, psk: str | None = None, space_cidr: str | None = None) -> ApiAnswer:
    """An answer as the poller posts it; `psk` and `space_cidr` bypass validation, as a
    value that validation misses would."""
    raw = vpn_json()
    raw["name"] = vpn
    if key == LAB:  # other tunnel IPs than the office's
        raw["tunnels"][0]["ip"], raw["tunnels"][1]["ip"] = "198.51.100.11", "198.51.100.12"
    parsed = parse_vpn_answer(raw)
    conn = parsed.connection
    if psk is not None:
        conn = replace(conn, tunnels=(replace(conn.tunnels[0], psk=Secret(psk)), conn.tunnels[1]))
    if space_cidr is not None:
        conn = replace(conn, space_cidr_block=space_cidr)
    return ApiAnswer(key, FetchResult(replace(parsed, connection=conn), raw, '"etag"', 4000))


def view(controller: Controller, vpn: str):
    return next(c for c in controller.snapshot.connections if c.vpn == vpn)


def error_samples(controller: Controller) -> dict[tuple[str, str], float]:
    found = samples(exposition(controller.snapshot))
    return {(dict(labels)["vpn"], dict(labels)["stage"]): value for (name, labels), value in found.items()
            if name == "space_vpn_connection_errors_total"}


def test_a_connection_whose_apply_raises_leaves_the_other_applied(config_file, caplog):
    """A 70 000-character PSK: the VICI encoder raises struct.error on loading lab's tunnel 1."""
    charon = EncodingCharon()
    controller = make(config_file, charon)
    controller.handle(answer(OFFICE, "office"))
    controller.handle(answer(LAB, "lab", psk="k" * 70_000))
    with caplog.at_level(logging.DEBUG, logger="agent.daemon.controller"):
        controller.reconcile_pass()
        controller.reconcile_pass()
    assert ("initiate-child", OFFICE_T1) in charon.calls
    assert view(controller, "office").health is Health.OK
    assert LAB_T1 not in charon.conns and "svpn-acme-space-lab-t2" in charon.conns  # its tunnel 2 went ahead
    lab = view(controller, "lab")
    assert lab.health >= Health.DEGRADED  # at best: the agent cannot carry out its plan
    assert lab.summary.startswith("applying failed (LoadTunnel: error: ")
    assert "left as they are" in lab.summary and "k" * 20 not in lab.summary
    assert lab.connection_errors["apply"] >= 2 and "plan" not in lab.connection_errors
    assert error_samples(controller)[("lab", "apply")] == lab.connection_errors["apply"]
    assert error_samples(controller)[("office", "apply")] == 0
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and "acme-space/lab" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the traceback once, not every pass
    assert "applying failed: LoadTunnel: error:" in logged[0].getMessage()
    assert not any("k" * 20 in r.getMessage() for r in caplog.records)


def test_a_connection_whose_planning_raises_keeps_its_tunnels_and_the_other_is_planned(config_file, monkeypatch,
                                                                                       caplog):
    charon = FakeCharon()
    controller = make(config_file, charon)
    controller.handle(answer(OFFICE, "office"))
    controller.handle(answer(LAB, "lab"))
    controller.reconcile_pass()
    controller.reconcile_pass()
    assert view(controller, "lab").health is Health.OK
    real_decide = pass_plan.decide

    def decide(settings, *args, **kwargs):
        if settings.vpn == "lab":
            raise KeyError("a bug only lab hits")
        return real_decide(settings, *args, **kwargs)

    monkeypatch.setattr(pass_plan, "decide", decide)
    charon.calls.clear()
    charon.sas.pop(OFFICE_T1)  # office's active tunnel goes down: it must still fail over
    with caplog.at_level(logging.INFO, logger="agent.daemon.controller"):
        controller.reconcile_pass()
        controller.reconcile_pass()
    assert charon.calls[0] == ("initiate-child", "svpn-acme-space-office-t2")
    assert [f.to_tunnel for f in view(controller, "office").failovers] == [2]
    assert not any(name.startswith("svpn-acme-space-lab") for _, name in charon.calls)  # lab: nothing done...
    assert {"svpn-acme-space-lab-t1", "svpn-acme-space-lab-t2"} <= charon.conns  # ...nothing unloaded
    lab = view(controller, "lab")
    assert lab.health is Health.DEGRADED  # was OK: without decisions, no failover
    assert lab.summary.startswith("planning failed (KeyError: 'a bug only lab hits')")
    assert [t.number for t in lab.tunnels] == [1, 2]  # still shown as last known
    assert lab.connection_errors == {"plan": 2}
    assert error_samples(controller)[("lab", "plan")] == 2
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "acme-space/lab: planning failed: KeyError: 'a bug only lab hits'; its tunnels are left as they "
        "are, the other connections go on"]

    monkeypatch.setattr(pass_plan, "decide", real_decide)
    with caplog.at_level(logging.INFO, logger="agent.daemon.controller"):
        controller.reconcile_pass()
    assert "acme-space/lab: planning works again" in caplog.messages
    assert not view(controller, "lab").summary.startswith("planning failed")
    assert view(controller, "lab").connection_errors == {"plan": 2}  # a counter: it stays


def test_an_ipv6_route_is_contained_in_route_mode(config_file):
    """An IPv6 space CIDR (validation missed it): the route write and the fast reroute's
    encoding refuse it, for lab alone; office's routes are written and its reroute armed."""
    config_file.write_text(config_file.read_text().replace("local_address: 203.0.113.10}",
                                                          "local_address: 203.0.113.10, mode: route}"))
    charon, links, sender = FakeCharon(), EncodingLinks(), EncodingRouteSocket()
    reroute = FastReroute(sender)
    controller = make(config_file, charon, links=links, reroute=reroute)
    controller.handle(answer(OFFICE, "office"))
    controller.handle(answer(LAB, "lab", space_cidr="2001:db8::/32"))
    for _ in range(3):
        controller.reconcile_pass()
    assert {dst for dst, _, _ in links.routes} == {"10.0.0.0/16"}
    assert view(controller, "office").health is Health.OK and view(controller, "office").connection_errors == {}
    lab = view(controller, "lab")
    assert "SetRoute: ValueError: route 2001:db8::/32: not an IPv4 network" in lab.summary
    assert lab.connection_errors["apply"] >= 3
    from agent.adapters.charon import CharonEvent

    reroute.on_event(CharonEvent("child-updown", (OFFICE_T1,), False))
    assert sender.routes and all(dst == "10.0.0.0/16" for dst, _, _ in sender.routes)


def test_the_loop_says_it_is_alive_whatever_its_passes_do(config_file):
    """Every pass fails as a whole (observing the kernel raises): the loop logs, shows it
    in status, and still comes round to the watchdog."""
    charon = FakeCharon()
    alive = threading.Semaphore(0)
    controller = make(config_file, charon, on_alive=alive.release)
    controller.handle(answer(OFFICE, "office"))
    controller.reconcile_pass()

    def broken(previous):
        raise RuntimeError("netlink exploded")

    controller._edges.observe_net = broken
    loop = threading.Thread(target=controller.run, daemon=True)
    loop.start()
    for _ in range(3):
        controller.post(object())  # wakes the loop: an unknown message, then a pass
        assert alive.acquire(timeout=5)
    assert any("reconcile pass failed (RuntimeError: netlink exploded)" in e for e in controller.snapshot.errors)
    controller.post(Stop())
    loop.join(5)
    assert not loop.is_alive()


def test_the_loop_pets_the_watchdog_while_one_connection_keeps_failing(config_file, monkeypatch):
    charon = EncodingCharon()
    alive = threading.Semaphore(0)
    controller = make(config_file, charon, on_alive=alive.release)
    controller.handle(answer(OFFICE, "office"))
    controller.handle(answer(LAB, "lab", psk="k" * 70_000))
    loop = threading.Thread(target=controller.run, daemon=True)
    loop.start()
    started = time.monotonic()
    for _ in range(3):
        controller.post(object())
        assert alive.acquire(timeout=5)
    assert time.monotonic() - started < 5
    assert view(controller, "office").health is Health.OK
    assert view(controller, "lab").connection_errors["apply"] >= 3
    assert controller.snapshot.errors == ()  # the pass itself went through
    controller.post(Stop())
    loop.join(5)


def test_setup_actions_are_told_apart_by_the_connection_they_work_for():
    from agent.core.charon_objects import InitiateChild, TerminateIke, UnloadConn, UnloadShared
    from agent.core.faults import action_owner
    from agent.core.netstate import interface_name
    from agent.core.route_mode import EnsureInterface, RemoveInterface, SetRoute

    connections = [(OFFICE, "office"), (LAB, "lab")]
    lab_if = interface_name(LAB, "lab", 2)
    assert action_owner(TerminateIke(LAB_T1, "7"), connections) == LAB
    assert action_owner(InitiateChild(OFFICE_T1), connections) == OFFICE
    assert action_owner(UnloadShared("svpn-acme-space-lab-t2"), connections) == LAB
    assert action_owner(EnsureInterface(lab_if, 5, 1400), connections) == LAB
    assert action_owner(SetRoute("10.0.0.0/16", lab_if, 100, None), connections) == LAB
    assert action_owner(UnloadConn("svpn-removed-t1"), connections) is None  # no configured connection
    assert action_owner(RemoveInterface("svgone1234-1"), connections) is None


def test_plan_pass_contains_a_connection_whose_preparation_raises(config_file, monkeypatch):
    """The pure plan alone: lab's share raises before its decision; office's plan is whole,
    lab's step does nothing and carries the fault, counted once."""
    controller = make(config_file, FakeCharon())
    controller.handle(answer(OFFICE, "office"))
    controller.handle(answer(LAB, "lab"))
    real = pass_plan.desired_connection

    def desired_connection(**kwargs):
        if kwargs["vpn"] == "lab":
            raise OverflowError("huge")
        return real(**kwargs)

    monkeypatch.setattr(pass_plan, "desired_connection", desired_connection)
    plan = controller._plan()
    assert [(f.key, f.stage.value, f.text) for f in plan.faults] == [(LAB, "plan", "OverflowError: huge")]
    office, lab = plan.steps
    assert office.charon_actions or any(getattr(a, "connection", None) for a in plan.setup)
    assert all(getattr(a, "connection", None) is None or a.connection.key == OFFICE for a in plan.setup)
    assert lab.charon_actions == () and lab.net_actions == () and lab.failover is None
    assert lab.memory.faults == {pass_plan.FaultStage.PLAN: 1}
    assert not any(t.key == LAB for t in plan.probe_targets)
