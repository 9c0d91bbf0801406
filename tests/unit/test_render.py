"""`agentctl status` as people see it: the renderer against hand-written golden text,
and agentctl's exit codes and JSON output over a real control socket; `show-config` as
YAML (what PyYAML would print, and read back unchanged)."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from agent.cli import agentctl
from agent.cli.render import EXIT_CODES, EXIT_UNKNOWN, exit_code, render_config, render_status
from agent.config import AgentConfig, ConnectionConfig, StaticConfig, StaticTunnelConfig, load_config, redacted
from agent.control.server import ControlServer
from agent.core.model import Secret
from agent.core.snapshot import ApiBudgetView, ConnectionView, FailoverView, HaView, Health, Snapshot, TunnelView

REPO = Path(__file__).resolve().parents[2]

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

# The token's rate-limit pool runs low: the poller waits longer than api.poll_interval.
BUDGET = replace(OK, api_budget=ApiBudgetView(remaining=212, poll_interval=8000 / 212, base_interval=30.0,
                                              stretched=True, calls_per_round=1))


@pytest.mark.parametrize(
    "snap, golden",
    [(OK, "status_ok.txt"), (DEGRADED, "status_degraded.txt"), (DOWN, "status_down.txt"),
     (ROUTE, "status_route.txt"), (DRAINED, "status_drained.txt"), (BUDGET, "status_budget.txt")],
    ids=["ok", "degraded", "down", "route", "drained", "budget"],
)
def test_render_matches_golden_text(snap, golden):
    expected = (GOLDEN / golden).read_text(encoding="utf-8")
    assert render_status(snap.to_dict()) == expected


@pytest.mark.parametrize("budget, line", [
    (ApiBudgetView(4410, 30.0, 30.0, False, 1), "Platform API budget: 4410 calls left, polling every 30 s"),
    (ApiBudgetView(None, 2.5, 2.5, False, 1), "Platform API budget: not reported, polling every 2.5 s"),
    (ApiBudgetView(0, 300.0, 1.0, True, 2), "Platform API budget: 0 calls left, polling stretched to 300 s "
                                            "(normally 1 s)"),
], ids=["plenty", "not-reported", "empty"])
def test_the_api_budget_line(budget, line):
    lines = render_status(replace(OK, api_budget=budget).to_dict()).splitlines()
    assert lines[2] == line


def test_no_api_budget_line_while_nothing_is_polled():
    assert "Platform API" not in render_status(OK.to_dict())


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


def test_exit_codes_are_the_health_values():
    """agentctl keeps its own table (no dataclass import at start-up); it must agree."""
    assert EXIT_CODES == {h.name.lower(): h.value for h in Health if h is not Health.UNKNOWN}
    assert EXIT_UNKNOWN == Health.UNKNOWN.value
    assert exit_code(DEGRADED.to_dict()) == 1 and exit_code({"health": "bogus"}) == EXIT_UNKNOWN


# -- show-config ---------------------------------------------------------------------

STATIC_CONFIG = AgentConfig(connections=(ConnectionConfig(
    space="static", vpn="datacenter", local_address="198.51.100.7",
    static=StaticConfig(ike_version=2, routable_cidrs=("192.168.10.0/24", "192.168.20.0/24"),
                        space_cidr_block="10.20.0.0/16",
                        tunnels=(StaticTunnelConfig("198.51.100.1", Secret("k1"), psk_file="/etc/psk/1"),
                                 StaticTunnelConfig("198.51.100.2", Secret("k2"), psk_file="/etc/psk/2")))),))


@pytest.mark.parametrize("config", [load_config(str(REPO / "config" / "agent.example.yaml")), STATIC_CONFIG],
                         ids=["example", "static"])
def test_show_config_is_laid_out_as_pyyaml_would(config):
    document = json.loads(json.dumps(redacted(config)))  # as it arrives over the socket
    assert render_config(document) == yaml.safe_dump(document, sort_keys=False)


TRICKY = ["yes", "No", "on", "OFF", "true", "null", "~", "", "1", "-2", "0o7", "012", "0x1f", "1_000", "1:20",
          "1.5", ".5", "1e3", "+.inf", ".NaN", "2001-12-14", "2001-12-14 21:59:43.10 -5", "<<", "=",
          " lead", "trail ", "a: b", "a #b", "#c", "-x", "- x", "?q", "it's", '"q"', "back\\slash", "x:",
          "[x]", "{y}", "*a", "&b", "!t", "%p", "@q", "`r", "|", ">", ",", "tab\there", "line\nbreak",
          "ü", "\u2028", "\x85", "\x7f", "😀", "1s", "127.0.0.1:19813", "https://api.heroku.com/x?a=b"]


def test_show_config_reads_back_unchanged():
    document = {"strings": TRICKY, "as keys": {text: text for text in TRICKY if text},
                "scalars": [0, 7, -3, 1.5, 1e20, 1e-7, float("inf"), True, False, None],
                "empty": {"list": [], "map": {}}, "nested": [[1, [2]], [{"a": []}], {"b": [{"c": 1}]}]}
    assert yaml.safe_load(render_config(document)) == document


@pytest.mark.parametrize("text", ["1s", "127.0.0.1:19813", "/etc/space-vpn-agent/token", "acme-space"])
def test_show_config_leaves_ordinary_strings_plain(text):
    assert render_config({"key": text}) == f"key: {text}\n"


def test_agentctl_show_config_prints_yaml(short_dir, capsys):
    document = json.loads(json.dumps(redacted(STATIC_CONFIG)))
    server = ControlServer(str(short_dir / "control.sock"), lambda: OK, lambda request: None, lambda: "reload",
                           make_request=lambda command, args, reply, peer: reply.put((True, document)))
    server.start()
    try:
        assert agentctl.main(["--socket", server.path, "show-config"]) == 0
    finally:
        server.stop()
    assert yaml.safe_load(capsys.readouterr().out) == document


@pytest.mark.parametrize("columns", ["50", "120"])
def test_agentctl_help_is_laid_out_as_argparse_would(monkeypatch, capsys, columns):
    """agentctl gives argparse the width itself (no shutil import); same text as argparse's own."""
    def help_text() -> str:
        with pytest.raises(SystemExit) as stopped:
            agentctl.main(["--help"])
        assert stopped.value.code == 0
        return capsys.readouterr().out
    monkeypatch.setenv("COLUMNS", columns)
    ours = help_text()
    monkeypatch.setattr(agentctl, "_formatter", argparse.HelpFormatter)
    assert ours == help_text() and ours.startswith("usage: agentctl")


def test_render_says_what_heroku_says_and_which_tunnel_runs_which_settings():
    rolling = office(Health.OK, "redundant", (tunnel_view(1, role="active", generation=1),
                                              tunnel_view(2, generation=2)),
                     generation=2, stage="active",
                     heroku_note="")
    text = render_status(json.loads(json.dumps(snapshot(rolling).to_dict())))
    assert "Settings: rolling to generation 2 (tunnel 1 generation 1, tunnel 2 generation 2)" in text
    assert "Heroku:" not in text
    failed = office(Health.DOWN, "x", (), stage="failed", generation=1,
                    heroku_note="Heroku reports the VPN connection failed: supplied CIDR block already in use")
    text = render_status(json.loads(json.dumps(snapshot(failed).to_dict())))
    assert "Heroku: Heroku reports the VPN connection failed: supplied CIDR block already in use" in text
    assert "Settings:" not in text


def test_an_ha_backup_says_so_and_exits_0(serve, capsys):
    backup = snapshot(office(Health.OK, "standby (HA backup): 203.0.113.10 is not on this node; tunnels loaded, "
                             "nothing initiated", (), ha="backup", ha_reason="203.0.113.10 is not on this node"),
                      ha=HaView(state="backup", keepalived="backup"))
    path = serve(backup)
    assert agentctl.main(["--socket", path, "status"]) == 0
    out = capsys.readouterr().out
    assert "HA: this node is backup, keepalived said backup" in out.splitlines()
    assert "HA: backup (203.0.113.10 is not on this node)" in out.splitlines()


def test_agentctl_ha_passes_keepalived_s_word_to_the_loop(serve, capsys):
    import queue
    import threading
    import time

    path = serve(OK)
    requests = serve.inbox

    def answer():  # the loop's part: take the request, say it is noted
        deadline = time.monotonic() + 5
        while not requests and time.monotonic() < deadline:
            time.sleep(0.01)
        _command, args, reply, _peer = requests[0]
        reply.put((True, {"state": args["state"]}))

    threading.Thread(target=answer, daemon=True).start()
    assert agentctl.main(["--socket", path, "ha", "master"]) == 0
    assert capsys.readouterr().out == "ha: master noted\n"
    assert requests[0][:2] == ("ha", {"state": "master"})
    assert isinstance(requests[0][2], queue.SimpleQueue)
    with pytest.raises(SystemExit):
        agentctl.main(["--socket", path, "ha", "primary"])  # argparse refuses what keepalived never says
