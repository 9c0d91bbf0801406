"""How a probe result changes a connection's record: it counts for the IKE SA it
crossed, and a lost probe sent before the tunnel had an installed CHILD_SA counts for
nothing (at start in route mode the IKE SA is up a Quick Mode before the child)."""

from __future__ import annotations

from dataclasses import replace

from agent.core.desired import desired_connection
from agent.core.health import ProbeResult
from agent.core.memory import ConnectionMemory, ConnectionRecord, ConnectionSettings, FarEnd
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnConnection
from agent.core.modes import Mode
from agent.core.observation import CharonState, ChildSa, IkeSa, TunnelSas
from agent.core.tunnel_timing import TunnelTiming
from agent.daemon.loop_state import with_probe_result

T1 = "svpn-acme-space-office-t1"
VPN = VpnConnection(
    id="1", name="office", public_ip="203.0.113.10", routable_cidrs=("172.16.0.0/16",), space_cidr_block="10.0.0.0/16",
    ike_version=1, status=ConnectionStatus.ACTIVE,
    tunnels=(Tunnel(1, "198.51.100.1", Secret("k1.xxxxxxxx")), Tunnel(2, "198.51.100.2", Secret("k2.xxxxxxxx"))),
)
DESIRED = desired_connection(key="acme-space-office", space="acme-space", vpn="office", local_address="203.0.113.10",
                             local_id=None, mode=Mode.ROUTE, connection=VPN)


def record(installed_at: float | None) -> ConnectionRecord:
    settings = ConnectionSettings(key="acme-space-office", space="acme-space", vpn="office", mode=Mode.ROUTE,
                                  mode_reason="configured")
    memory = ConnectionMemory(desired=DESIRED, timing={T1: TunnelTiming(installed_at=installed_at)})
    return ConnectionRecord(settings, FarEnd(vpn=VPN, source="api"), memory)


def charon(child: bool) -> CharonState:
    children = (ChildSa(T1, "9", "INSTALLED"),) if child else ()
    return CharonState(True, sas={T1: TunnelSas((IkeSa(T1, "7", "ESTABLISHED", children=children),))})


def lost(sent_at: float) -> ProbeResult:
    return ProbeResult("acme-space-office", 1, False, None, sent_at)


def test_a_lost_probe_before_the_child_was_installed_counts_for_nothing():
    assert with_probe_result(record(None), lost(10.0), charon(False)) == record(None)
    assert with_probe_result(record(20.0), lost(19.9), charon(True)) == record(20.0)


def test_a_lost_probe_through_an_installed_child_counts_for_its_ike_sa():
    stats = with_probe_result(record(20.0), lost(20.5), charon(True)).memory.probes[1]
    assert (stats.sa_id, stats.sent, stats.lost, stats.consecutive_failures) == ("7", 1, 1, 1)


def test_an_answered_probe_always_counts():
    answered = replace(lost(10.0), ok=True, rtt=0.004)
    stats = with_probe_result(record(None), answered, charon(False)).memory.probes[1]
    assert (stats.sent, stats.lost, stats.last_rtt) == (1, 0, 0.004)
