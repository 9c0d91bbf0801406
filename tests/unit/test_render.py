"""`agentctl status` as people see it: the renderer against hand-written golden text,
and agentctl's exit codes and JSON output over a real control socket."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from agent.cli import agentctl
from agent.cli.render import render_status
from agent.control.server import ControlServer
from agent.core.snapshot import ConnectionView, FailoverView, Health, Snapshot, TunnelView

GOLDEN = Path(__file__).parent / "golden"


def tunnel_view(number: int, **fields) -> TunnelView:
    defaults = dict(number=number, ip=f"203.0.113.1{number}", api_status="UP", ike_state="ESTABLISHED",
                    child_state="NONE", role="standby")
    return TunnelView(**{**defaults, **fields})


def office(health: Health, summary: str, tunnels: tuple[TunnelView, ...], **fields) -> ConnectionView:
    defaults = dict(space="acme-space", vpn="office", mode="policy", mode_reason="configured", source="api",
                    connection_status="active", health=health, summary=summary, tunnels=tunnels)
    return ConnectionView(**{**defaults, **fields})


def snapshot(*connections: ConnectionView, **fields) -> Snapshot:
    defaults = dict(agent_version="1.2.0", started_at=1700000000.0, generated_at=1700000060.0,
                    charon_reachable=True, charon_version="5.9.8", ready=True, connections=connections)
    return Snapshot(**{**defaults, **fields})


OK = snapshot(office(Health.OK, "tunnel 1 active, redundancy ok", (
    tunnel_view(1, child_state="INSTALLED", role="active", established_seconds=3725,
                bytes_in=1572864, bytes_out=524288, packets_in=1210, packets_out=987, last_inbound_seconds=2),
    tunnel_view(2, established_seconds=75),
)))

DEGRADED = snapshot(
    office(Health.DEGRADED, "redundancy lost: tunnel 2 not established", (
        tunnel_view(1, child_state="INSTALLED", role="active", established_seconds=45,
                    bytes_in=2048, bytes_out=1023, last_inbound_seconds=75),
        tunnel_view(2, api_status="DOWN", ike_state="CONNECTING", api_status_message="maintenance"),
    ), source="cache", api_error="Platform API unreachable: connection refused"),
    errors=("config reload failed: /etc/space-vpn-agent/agent.yaml: connections[0].mode: "
            "must be auto, route or policy",),
)

DOWN = snapshot(
    office(Health.DOWN, "charon unreachable", (
        tunnel_view(1, ike_state="DOWN", role="active"),
        tunnel_view(2, ike_state="DOWN"),
    )),
    ConnectionView(space="acme-space", vpn="lab", mode="route", mode_reason="configured", source="none",
                   connection_status="unknown", health=Health.DOWN,
                   summary="VPN connection not known yet (Platform API)",
                   api_error="HTTP 404: vpn connection lab not found"),
    charon_reachable=False, charon_version="",
)


ROUTE = snapshot(office(Health.DEGRADED, "redundancy lost: tunnel 1 fails its probes", (
    tunnel_view(1, child_state="INSTALLED", role="standby", established_seconds=600, interface="svoffice3fa2-1",
                probe_sent=600, probe_lost=4, probe_consecutive_failures=4, probe_rtt_ms=None,
                probe_healthy=False, problem="4 probes lost"),
    tunnel_view(2, child_state="INSTALLED", role="active", established_seconds=7300, interface="svoffice3fa2-2",
                bytes_in=10_485_760, bytes_out=3_145_728, last_inbound_seconds=0,
                probe_sent=7300, probe_lost=0, probe_rtt_ms=1.234),
), mode="route", mode_reason="auto: route, the kernel has XFRM interfaces",
   failovers=(FailoverView(1700000030.0, 1, 2, "4 probes lost"),), failover_counts={"probe": 1}))

DRAINED = snapshot(office(Health.OK, "tunnel 2 active, redundancy ok", (
    tunnel_view(1, role="standby", drained=True, established_seconds=30),
    tunnel_view(2, child_state="INSTALLED", role="active", established_seconds=7300),
), failovers=(FailoverView(1700000000.0, 2, 1, "IKE SA down"), FailoverView(1700000050.0, 1, 2,
                                                                            "drained by the operator"))))


@pytest.mark.parametrize(
    "snap, golden",
    [(OK, "status_ok.txt"), (DEGRADED, "status_degraded.txt"), (DOWN, "status_down.txt"),
     (ROUTE, "status_route.txt"), (DRAINED, "status_drained.txt")],
    ids=["ok", "degraded", "down", "route", "drained"],
)
def test_render_matches_golden_text(snap, golden):
    expected = (GOLDEN / golden).read_text(encoding="utf-8")
    assert render_status(snap.to_dict()) == expected


def test_render_reads_the_json_document_not_the_objects():
    status = json.loads(json.dumps(OK.to_dict()))
    assert render_status(status) == (GOLDEN / "status_ok.txt").read_text(encoding="utf-8")


# -- agentctl over a real control socket ----------------------------------------------

@pytest.fixture
def short_dir():
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="svpn-ctl-", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(short_dir):
    servers: list[ControlServer] = []
    inbox: list[object] = []

    def start(snap: Snapshot) -> str:
        path = str(short_dir / "control.sock")
        server = ControlServer(path, lambda: snap, inbox.append, lambda: "reload")
        server.start()
        servers.append(server)
        return path

    start.inbox = inbox
    yield start
    for server in servers:
        server.stop()


@pytest.mark.parametrize(
    "snap, code, first_line",
    [
        (OK, 0, "space-vpn-agent 1.2.0: OK"),
        (DEGRADED, 1, "space-vpn-agent 1.2.0: DEGRADED"),
        (DOWN, 2, "space-vpn-agent 1.2.0: DOWN"),
        (snapshot(), 2, "space-vpn-agent 1.2.0: DOWN"),
    ],
    ids=["ok", "degraded", "down", "no-connections"],
)
def test_agentctl_status_exit_code_follows_health(serve, capsys, snap, code, first_line):
    path = serve(snap)
    assert agentctl.main(["--socket", path, "status"]) == code
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == first_line
    assert out == render_status(snap.to_dict())
    assert err == ""


def test_agentctl_status_json_prints_the_status_document(serve, capsys):
    path = serve(DEGRADED)
    assert agentctl.main(["--socket", path, "status", "--json"]) == 1
    out, _ = capsys.readouterr()
    document = json.loads(out)
    assert document == json.loads(json.dumps(DEGRADED.to_dict()))
    assert document["health"] == "degraded"
    assert document["connections"][0]["tunnels"][1]["api_status_message"] == "maintenance"


def test_agentctl_without_agent_exits_3_with_a_clear_message(short_dir, capsys):
    path = str(short_dir / "absent.sock")
    assert agentctl.main(["--socket", path, "status"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"agentctl: the agent is not running (no answer on {path}); "
                   "start it with `systemctl start space-vpn-agent`\n")


def test_agentctl_reload_posts_to_the_agent(serve, capsys):
    path = serve(OK)
    assert agentctl.main(["--socket", path, "reload"]) == 0
    assert capsys.readouterr().out == "reload requested\n"
    assert serve.inbox == ["reload"]
