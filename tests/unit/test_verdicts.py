"""A connection's health (agentctl's exit code) from the per-tunnel verdicts that the
failover decides on: both modes, and the cases where the two could once disagree."""

from __future__ import annotations

import pytest

from agent.core.failover import TunnelHealth, TunnelProblem, assess
from agent.core.health import InboundWatch, ProbeStats
from agent.core.model import TunnelApiStatus
from agent.core.observation import ChildSa, IkeSa, TunnelSas
from agent.core.snapshot import Health
from agent.core.verdicts import connection_verdict

NOW = 1000.0


def sas(state: str | None = "ESTABLISHED", child: bool = False) -> TunnelSas:
    if state is None:
        return TunnelSas()
    children = (ChildSa("c", "5", "INSTALLED"),) if child else ()
    return TunnelSas((IkeSa("t", "3", state, established=100, children=children),))


def verdict_of(route: bool, one: dict, two: dict, active: int = 1) -> tuple[Health, str]:
    """Both tunnels' health as `assess` folds it, then the connection's verdict."""
    base = dict(route_mode=route, ever_usable=True, unusable_since=NOW - 30, probes=None, probe_failures=3,
                inbound=None, api_status=TunnelApiStatus.UP, api_down_since=None, sa_established_at=NOW - 100,
                drained=False, now=NOW)
    health = {n: assess(**{**base, "is_active": n == active, **overrides}) for n, overrides in ((1, one), (2, two))}
    return connection_verdict(health, active, True)


@pytest.mark.parametrize(
    ("route", "one", "two", "expected"),
    [
        (False, {"sas": sas(child=True)}, {"sas": sas()}, (Health.OK, "tunnel 1 active, redundancy ok")),
        (False, {"sas": sas(child=True)}, {"sas": sas("CONNECTING")},
         (Health.DEGRADED, "redundancy lost: tunnel 2: IKE SA down")),
        (False, {"sas": sas(child=True)}, {"sas": sas(None)},
         (Health.DEGRADED, "redundancy lost: tunnel 2: IKE SA down")),
        (False, {"sas": sas()}, {"sas": sas()}, (Health.DOWN, "no tunnel carries traffic")),
        # The failover holds a silent active tunnel unhealthy (IKE confirms): so does the status.
        (False, {"sas": sas(child=True), "inbound": InboundWatch("5", 10, 99, NOW - 6, NOW),
                 "exchange_pending_since": NOW - 0.5}, {"sas": sas()},
         (Health.DOWN, "no tunnel carries traffic")),
        # A one-way stream with IKE answering is no failure.
        (False, {"sas": sas(child=True), "inbound": InboundWatch("5", 10, 99, NOW - 6, NOW)}, {"sas": sas()},
         (Health.OK, "tunnel 1 active, redundancy ok")),
        (True, {"sas": sas(child=True), "exchange_pending_since": NOW - 2}, {"sas": sas(child=True)},
         (Health.DEGRADED, "redundancy lost: tunnel 1: IKE request unanswered for 2.0 s")),
        (False, {"sas": sas(child=True)}, {"sas": sas(), "probes": ProbeStats("3", 9, 3, 3)},
         (Health.DEGRADED, "redundancy lost: tunnel 2: 3 probes lost")),
        (True, {"sas": sas(child=True)}, {"sas": sas(child=True)}, (Health.OK, "tunnel 1 active, redundancy ok")),
        (True, {"sas": sas(child=True)}, {"sas": sas()},
         (Health.DEGRADED, "redundancy lost: tunnel 2: no CHILD_SA")),
        (True, {"sas": sas()}, {"sas": sas(child=True)}, (Health.DEGRADED, "redundancy lost: tunnel 1: no CHILD_SA")),
        (True, {"sas": sas(child=True), "probes": ProbeStats("3", 9, 3, 3)},
         {"sas": sas(child=True), "probes": ProbeStats("3", 9, 3, 3)}, (Health.DOWN, "no tunnel carries traffic")),
    ],
    ids=["policy-ok", "policy-standby-connecting", "policy-standby-down", "policy-no-child", "policy-active-silent", "policy-one-way",
         "route-ike-unanswered",
         "policy-standby-probes", "route-ok", "route-standby-no-child", "route-carried-by-2", "route-both-probes"],
)
def test_connection_verdict(route, one, two, expected):
    assert verdict_of(route, one, two) == expected


def test_a_standby_still_in_its_startup_grace_is_not_redundancy():
    """The failover gives a tunnel that never came up STARTUP_GRACE; redundancy it is not."""
    grace = {"sas": sas(None), "ever_usable": False, "unusable_since": NOW - 1}
    assert verdict_of(False, {"sas": sas(child=True)}, grace) == (
        Health.DEGRADED, "redundancy lost: tunnel 2: IKE SA down")


def test_the_active_tunnel_is_named_and_charon_and_knowledge_come_first():
    ok = TunnelHealth(usable=True, carrying=True)
    standby = TunnelHealth(usable=True)
    assert connection_verdict({1: standby, 2: ok}, 2, True) == (Health.OK, "tunnel 2 active, redundancy ok")
    assert connection_verdict({1: ok, 2: ok}, 1, False) == (Health.DOWN, "charon unreachable")
    assert connection_verdict({}, None, True) == (Health.DOWN, "VPN connection not known yet (Platform API)")
    assert connection_verdict({1: TunnelHealth(usable=False, up=False, problem=TunnelProblem.IKE_DOWN), 2: ok},
                              2, True) == (Health.DEGRADED, "redundancy lost: tunnel 1: IKE SA down")
