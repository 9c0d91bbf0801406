"""The connection's life at Heroku: tunnels numbered by IP, settings generations, and the
stage each answer or 404 leads to (waiting, failed, not found, gone, forgotten)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, strategies as st

from agent.core.lifecycle import Stage, align_tunnels, far_end_after_answer, far_end_after_not_found, life_of
from agent.core.memory import ConnectionSettings, FarEnd
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnAnswer, VpnConnection
from agent.core.modes import Mode

SETTINGS = ConnectionSettings(key="k", space="acme", vpn="office", mode=Mode.POLICY, mode_reason="",
                              not_found_grace=300.0, forget_deleted_after=900.0)
NOW = 5_000.0
WALL = 1_800_000_000.0  # unix s; NOW plays the monotonic clock


def vpn(ips=("198.51.100.1", "198.51.100.2"), psks=("a", "b"), cidrs=("172.16.0.0/16",)) -> VpnConnection:
    tunnels = tuple(Tunnel(n, ip, Secret(psk)) for n, (ip, psk) in enumerate(zip(ips, psks), start=1))
    return VpnConnection("1", "office", "203.0.113.10", cidrs, "10.0.0.0/16", 1, ConnectionStatus.ACTIVE, tunnels)


def active(v: VpnConnection) -> VpnAnswer:
    return VpnAnswer(ConnectionStatus.ACTIVE, "", v)


def test_a_reordered_answer_keeps_each_tunnel_its_number():
    before = vpn()
    swapped = vpn(ips=("198.51.100.2", "198.51.100.1"), psks=("b", "a"))
    aligned = align_tunnels(before, swapped)
    assert [(t.number, t.ip, t.psk.reveal()) for t in aligned.tunnels] == [
        (1, "198.51.100.1", "a"), (2, "198.51.100.2", "b")]


def test_a_new_ip_takes_the_number_of_the_one_it_replaced():
    aligned = align_tunnels(vpn(), vpn(ips=("198.51.100.9", "198.51.100.1")))
    assert [t.ip for t in aligned.tunnels] == ["198.51.100.1", "198.51.100.9"]


ips = st.lists(st.integers(1, 254).map(lambda i: f"198.51.100.{i}"), min_size=2, max_size=2, unique=True)


@given(ips, ips)
def test_alignment_only_renumbers(old, new):
    aligned = align_tunnels(vpn(ips=old), vpn(ips=new))
    assert sorted(t.ip for t in aligned.tunnels) == sorted(new)
    assert [t.number for t in aligned.tunnels] == [1, 2]
    for number, ip in enumerate(old, start=1):
        if ip in new:
            assert aligned.tunnel(number).ip == ip


def test_generations_count_changes_of_settings_not_answers():
    far_end = far_end_after_answer(FarEnd(), active(vpn()), NOW, WALL)
    assert far_end.generation == 1
    same = far_end_after_answer(far_end, active(vpn(ips=("198.51.100.2", "198.51.100.1"), psks=("b", "a"))), NOW, WALL)
    assert same.generation == 1 and same.vpn == far_end.vpn
    updated = far_end_after_answer(same, active(vpn(cidrs=("172.16.0.0/16", "192.168.5.0/24"))), NOW, WALL)
    assert updated.generation == 2
    telemetry = replace(vpn(cidrs=("172.16.0.0/16", "192.168.5.0/24")), status_message="x")
    assert far_end_after_answer(updated, active(telemetry), NOW, WALL).generation == 2


def test_pending_and_failed_keep_what_runs():
    running = far_end_after_answer(FarEnd(), active(vpn()), NOW, WALL)
    for status in (ConnectionStatus.PENDING, ConnectionStatus.FAILED):
        after = far_end_after_answer(running, VpnAnswer(status, "because"), NOW + 1, WALL)
        assert after.vpn == running.vpn and after.generation == 1
        assert after.connection_status == status.value and after.status_message == "because"
    failed = far_end_after_answer(running, VpnAnswer(ConnectionStatus.FAILED, "CIDR in use"), NOW, WALL)
    assert life_of(failed, SETTINGS, NOW) == replace(life_of(failed, SETTINGS, NOW), stage=Stage.FAILED)
    assert "CIDR in use" in life_of(failed, SETTINGS, NOW).note


def test_waiting_for_a_new_connection():
    pending = far_end_after_answer(FarEnd(), VpnAnswer(ConnectionStatus.PENDING, "building"), NOW, WALL)
    life = life_of(pending, SETTINGS, NOW)
    assert life.stage is Stage.WAITING and life.note == "waiting for Heroku: the VPN connection is pending: building"


def test_a_404_is_a_creation_for_the_grace_then_a_wrong_name():
    missing = far_end_after_not_found(FarEnd(), NOW)
    assert life_of(missing, SETTINGS, NOW + 299).stage is Stage.WAITING
    late = life_of(far_end_after_not_found(missing, NOW + 400), SETTINGS, NOW + 400)
    assert late.stage is Stage.NOT_FOUND and "heroku spaces:vpn:info office -s acme" in late.note
    # An answer ends it.
    assert far_end_after_answer(missing, active(vpn()), NOW + 10, WALL).missing_since is None


@pytest.mark.parametrize("how", ["deleted", "404"])
def test_a_deleted_connection_keeps_its_tunnels_for_a_while(how):
    running = far_end_after_answer(FarEnd(), active(vpn()), NOW, WALL)
    if how == "404":
        gone = far_end_after_not_found(running, NOW)
    else:
        gone = far_end_after_answer(running, VpnAnswer(ConnectionStatus.DELETED), NOW, WALL)
    assert gone.vpn == running.vpn
    assert life_of(gone, SETTINGS, NOW + 899).stage is Stage.GONE
    assert "unloaded in" in life_of(gone, SETTINGS, NOW + 899).note
    assert life_of(gone, SETTINGS, NOW + 900).stage is Stage.FORGOTTEN
    # The first sighting counts: more 404s do not push the deadline.
    assert far_end_after_not_found(gone, NOW + 500).gone_since == NOW
    # It comes back (re-created): active again, nothing forgotten.
    back = far_end_after_answer(gone, active(vpn(psks=("c", "d"))), NOW + 1000, WALL)
    assert back.gone_since is None and life_of(back, SETTINGS, NOW + 1000).stage is Stage.ACTIVE
    assert back.generation == 2


def test_a_static_connection_is_never_gone():
    static = FarEnd(vpn=vpn(), source="static", generation=1)
    assert far_end_after_not_found(static, NOW).gone_since is None
