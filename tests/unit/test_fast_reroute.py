"""FastReroute: armed by the loop, fired once by the event thread, guarding the loop's writes."""

from __future__ import annotations

import logging
import threading

from agent.adapters.charon import CharonConnected, CharonEvent
from agent.adapters.route_socket import PreparedRoute
from agent.core.route_mode import Reroute, SetRoute
from agent.daemon.fast_reroute import FastReroute

T1, T2 = "svpn-acme-space-office-t1", "svpn-acme-space-office-t2"
TO_2 = Reroute(T1, "acme-space/office", 1, 2, (SetRoute("10.0.0.0/16", "sv-2", 100, "172.16.0.2"),
                                              SetRoute("10.1.0.0/16", "sv-2", 100, "172.16.0.2")))
OTHER = Reroute("svpn-acme-space-lab-t2", "acme-space/lab", 2, 1, (SetRoute("10.9.0.0/16", "sl-1", 100, None),))
IFINDEX = {"sv-1": 4, "sv-2": 5, "sl-1": 7}


class Sender:
    """Keeps what was prepared and what was sent, as (dst, ifindex, metric, src)."""

    def __init__(self, refuse: str | None = None) -> None:
        self.prepared: dict[int, tuple] = {}
        self.sent: list[tuple] = []
        self.refuse = refuse

    def prepare(self, dst, ifname, ifindex, metric, src) -> PreparedRoute:
        sequence = len(self.prepared) + 1
        self.prepared[sequence] = (dst, ifindex, metric, src)
        return PreparedRoute(f"route {dst} dev {ifname} metric {metric}", sequence, b"")

    def send(self, routes: list[PreparedRoute]) -> list[str]:
        if self.refuse:
            return [f"{route.describe}: {self.refuse}" for route in routes]
        self.sent += [self.prepared[route.sequence] for route in routes]
        return []


def down(*names: str) -> CharonEvent:
    return CharonEvent("child-updown", names, False)


def armed(*plans: Reroute, sender: Sender | None = None) -> tuple[FastReroute, Sender]:
    sender = sender or Sender()
    reroute = FastReroute(sender)
    reroute.arm(plans, IFINDEX, reroute.fired)
    return reroute, sender


def test_the_armed_child_going_down_moves_every_route_once():
    reroute, sender = armed(TO_2, OTHER)
    reroute.on_event(down(T1))
    assert sender.sent == [("10.0.0.0/16", 5, 100, "172.16.0.2"), ("10.1.0.0/16", 5, 100, "172.16.0.2")]
    assert reroute.fired == 1
    reroute.on_event(down(T1))  # disarmed until the loop arms it again
    assert len(sender.sent) == 2 and reroute.fired == 1
    reroute.on_event(down("svpn-acme-space-lab-t2"))  # another connection's plan is still armed
    assert sender.sent[-1] == ("10.9.0.0/16", 7, 100, None) and reroute.fired == 2


def test_other_messages_move_nothing():
    reroute, sender = armed(TO_2)
    for message in (CharonEvent("child-updown", (T1,), True), CharonEvent("ike-updown", (T1,), False),
                    CharonEvent("child-rekey", (T1,), False), down(T2), CharonConnected(), "noise"):
        reroute.on_event(message)
    assert sender.sent == [] and reroute.fired == 0


def test_no_plan_towards_an_interface_the_kernel_does_not_show():
    reroute = FastReroute(sender := Sender())
    reroute.arm([TO_2], {"sv-1": 4}, reroute.fired)
    reroute.on_event(down(T1))
    assert sender.sent == [] and reroute.fired == 0


def test_a_pass_older_than_the_last_reroute_arms_nothing_and_may_not_write():
    reroute, sender = armed(TO_2)
    since = reroute.fired  # a pass begins
    reroute.on_event(down(T1))  # ... and a reroute fires meanwhile
    reroute.arm([TO_2], IFINDEX, since)
    reroute.on_event(down(T1))
    assert len(sender.sent) == 2  # the stale plan was not armed again
    with reroute.guard(since) as current:
        assert current is False
    with reroute.guard(reroute.fired) as current:
        assert current is True


def test_the_guard_holds_the_event_thread_off_while_the_loop_writes():
    reroute, sender = armed(TO_2)
    fired = threading.Event()
    with reroute.guard(reroute.fired):
        thread = threading.Thread(target=lambda: (reroute.on_event(down(T1)), fired.set()))
        thread.start()
        assert not fired.wait(0.2) and sender.sent == []
    thread.join(5)
    assert fired.is_set() and len(sender.sent) == 2


def test_a_refused_route_is_logged_and_never_raises(caplog):
    reroute, _ = armed(TO_2, sender=Sender(refuse="No such device"))
    with caplog.at_level(logging.WARNING):
        reroute.on_event(down(T1))
    assert reroute.fired == 1
    assert "fast reroute to tunnel 2 failed" in caplog.text and "metric 100: No such device" in caplog.text


def test_one_of_two_children_going_down_moves_nothing():
    """A selector roll (or a rekey) holds two children on the active tunnel: the old one
    going away leaves the new one carrying; the last one going down moves the route."""
    from dataclasses import replace

    reroute, sender = armed(replace(TO_2, children=frozenset({"3", "4"})))
    reroute.on_event(CharonEvent("child-updown", (T1,), False, ("3",)))
    assert sender.sent == [] and reroute.fired == 0
    reroute.on_event(CharonEvent("child-updown", (T1,), False, ("4",)))
    assert len(sender.sent) == 2 and reroute.fired == 1


def test_an_event_that_names_no_child_moves_at_once():
    from dataclasses import replace

    reroute, sender = armed(replace(TO_2, children=frozenset({"3", "4"})))
    reroute.on_event(down(T1))
    assert reroute.fired == 1
