"""The agent-wide health, and the status
document (`Snapshot.to_dict`) that agentctl and the control socket hand out."""

from __future__ import annotations

import json

import pytest

from agent.core.model import Secret
from agent.core.snapshot import ApiBudgetView, ConnectionView, Health, Snapshot, TunnelView


def tunnel(number: int, ike: str, child: str, role: str = "standby") -> TunnelView:
    return TunnelView(number=number, ip=f"203.0.113.1{number}", api_status="UP",
                      ike_state=ike, child_state=child, role=role)


ACTIVE_1 = tunnel(1, "ESTABLISHED", "INSTALLED", "active")
STANDBY_2 = tunnel(2, "ESTABLISHED", "NONE")


def view(vpn: str, health: Health, tunnels: tuple[TunnelView, ...] = ()) -> ConnectionView:
    return ConnectionView(space="acme-space", vpn=vpn, mode="policy", mode_reason="configured",
                          source="api", connection_status="active", health=health,
                          summary="summary", tunnels=tunnels)


def snapshot(*connections: ConnectionView) -> Snapshot:
    return Snapshot(agent_version="1.2.0", started_at=1700000000.0, generated_at=1700000060.5,
                    charon_reachable=True, charon_version="5.9.8", ready=True, connections=connections)


@pytest.mark.parametrize(
    "healths, expected",
    [
        ((), Health.DOWN),
        ((Health.OK,), Health.OK),
        ((Health.OK, Health.DEGRADED), Health.DEGRADED),
        ((Health.DEGRADED, Health.DOWN, Health.OK), Health.DOWN),
    ],
    ids=["no-connections", "one-ok", "worst-is-degraded", "worst-is-down"],
)
def test_snapshot_health_is_the_worst_connection(healths, expected):
    snap = snapshot(*(view(f"vpn{i}", h) for i, h in enumerate(healths)))
    assert snap.health is expected


def test_to_dict_round_trips_through_json():
    snap = Snapshot(
        agent_version="1.2.0", started_at=1700000000.0, generated_at=1700000060.5,
        charon_reachable=True, charon_version="5.9.8", ready=True,
        connections=(
            ConnectionView(
                space="acme-space", vpn="office", mode="policy", mode_reason="configured",
                source="cache", connection_status="active", health=Health.DEGRADED,
                summary="redundancy lost: tunnel 2 not established",
                api_error="Platform API unreachable", api_last_success=1699999000.0,
                tunnels=(
                    TunnelView(number=1, ip="203.0.113.11", api_status="UP", ike_state="ESTABLISHED",
                               child_state="INSTALLED", role="active", established_seconds=3725,
                               bytes_in=1572864, bytes_out=524288, packets_in=1210, packets_out=987,
                               last_inbound_seconds=2),
                    TunnelView(number=2, ip="203.0.113.12", api_status="DOWN", ike_state="CONNECTING",
                               child_state="NONE", role="standby", api_status_message="maintenance"),
                ),
            ),
        ),
        errors=("config reload failed",),
        api_budget=ApiBudgetView(remaining=212, poll_interval=37.7, base_interval=30.0, stretched=True,
                                 calls_per_round=1),
        pass_seconds=0.0125,
        passes=42,
        next_pass_seconds=10.0,
    )
    assert json.loads(json.dumps(snap.to_dict())) == {
        "agent_version": "1.2.0",
        "started_at": 1700000000.0,
        "generated_at": 1700000060.5,
        "charon_reachable": True,
        "charon_version": "5.9.8",
        "ready": True,
        "health": "degraded",
        "errors": ["config reload failed"],
        "api_budget": {"remaining": 212, "poll_interval": 37.7, "base_interval": 30.0, "stretched": True,
                       "calls_per_round": 1},
        "ha": None,
        "pass_seconds": 0.0125,
        "passes": 42,
        "next_pass_seconds": 10.0,
        "connections": [{
            "space": "acme-space", "vpn": "office", "mode": "policy", "mode_reason": "configured",
            "source": "cache", "connection_status": "active", "health": "degraded",
            "summary": "redundancy lost: tunnel 2 not established",
            "api_error": "Platform API unreachable", "api_last_success": 1699999000.0,
            "api_errors": {}, "failovers": [], "failover_counts": {}, "status_message": "", "stage": "unknown", "heroku_note": "", "generation": 0,
            "ha": "off", "ha_reason": "", "connection_errors": {},
            "tunnels": [
                {"number": 1, "ip": "203.0.113.11", "api_status": "UP", "ike_state": "ESTABLISHED",
                 "child_state": "INSTALLED", "role": "active", "established_seconds": 3725,
                 "bytes_in": 1572864, "bytes_out": 524288, "packets_in": 1210, "packets_out": 987,
                 "last_inbound_seconds": 2, "api_status_message": "", "interface": None,
                 "probe_sent": 0, "probe_lost": 0, "probe_consecutive_failures": 0, "probe_rtt_ms": None,
                 "probe_healthy": True, "drained": False, "problem": "", "established_at": None,
                 "bytes_in_total": 0, "bytes_out_total": 0, "packets_in_total": 0, "packets_out_total": 0,
                 "initiates": {}, "generation": 0},
                {"number": 2, "ip": "203.0.113.12", "api_status": "DOWN", "ike_state": "CONNECTING",
                 "child_state": "NONE", "role": "standby", "established_seconds": None,
                 "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0,
                 "last_inbound_seconds": None, "api_status_message": "maintenance", "interface": None,
                 "probe_sent": 0, "probe_lost": 0, "probe_consecutive_failures": 0, "probe_rtt_ms": None,
                 "probe_healthy": True, "drained": False, "problem": "", "established_at": None,
                 "bytes_in_total": 0, "bytes_out_total": 0, "packets_in_total": 0, "packets_out_total": 0,
                 "initiates": {}, "generation": 0},
            ],
        }],
    }


def _leaves(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def test_to_dict_holds_only_plain_json_values_and_no_secret():
    snap = snapshot(view("office", Health.OK, (ACTIVE_1, STANDBY_2)))
    data = snap.to_dict()
    leaves = list(_leaves(data))
    assert not any(isinstance(leaf, Secret) for leaf in leaves)
    assert all(leaf is None or type(leaf) in (str, int, float, bool) for leaf in leaves)
    assert data["health"] == "ok"
    assert data["connections"][0]["health"] == "ok"
    assert "redacted" not in json.dumps(data)
