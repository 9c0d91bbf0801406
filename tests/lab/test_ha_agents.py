"""The agent's side of the HA pair (issue 14), in the HA lab: one agent per gateway with
`ha: {enabled: true}` and `local_address` = the WAN VIP, told by keepalived's notify
(`agentctl --socket S ha master|backup|fault`) and watching the VIP itself.

The contract these tests hold the agent to:
- backup: connections loaded into charon, nothing initiated, no SA of its own, no
  routes; `agentctl status` exits 0; status has `"ha": {"enabled": true, "state": ...}`;
  /metrics has `space_vpn_ha_state{state="master"|"backup"|"fault"}` 1 for the current
  state, 0 for the others;
- master: both tunnels initiated at once; the space side replaces the old node's SAs
  (`unique = replace`, same IKE identity).

One lab for the whole module, tests in file order, each from `lab.restore()`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from space_vpn_lab.agent_process import is_redundant
from space_vpn_lab.bench_timeline import TimedPinger, reply_gaps
from space_vpn_lab.ha_lab import HaLab
from space_vpn_lab.ha_report import gap_figures
from space_vpn_lab.ha_systems import AGENT_METRICS_PORT, AgentPair, gateway_conns, gateway_sas
from space_vpn_lab.ha_topology import LAN_HOST_IP, LAN_VIP, WAN_IFACE, WAN_VIP
from space_vpn_lab.netns import in_netns
from space_vpn_lab.topology import SPACE_HOST_IP
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, T2, assert_no_secret, require_keepalived

pytestmark = pytest.mark.lab

BOTH = {WAN_VIP, LAN_VIP}
TAKEOVER_BOUND_S = 3.0
#: The issue's goal is <= 2 s lost (VRRP + IKE); the test allows for a loaded CI machine.
AGENT_OUTAGE_BOUND_S = 5.0
#: How long a backup is watched for anything it should not do.
WATCH_S = 3.0


@pytest.fixture(scope="module")
def token() -> str:
    return "HRKU-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def ha_lab(tmp_path_factory: pytest.TempPathFactory, token: str) -> Iterator[HaLab]:
    require_keepalived()
    workdir = tmp_path_factory.mktemp("ha-agents")
    prefix = os.environ.get("SPACE_VPN_LAB_PREFIX", "svt")
    with HaLab(workdir, lambda lab: AgentPair(lab, token), prefix=prefix) as lab:
        yield lab
    logs = {**lab.log_texts(), **lab.software.log_texts()}
    for text in logs.values():
        assert_no_secret(text, (*lab.every_psk, token))


@pytest.fixture
def lab(ha_lab: HaLab) -> HaLab:
    ha_lab.restore()
    ha_lab.wait_for(ha_lab.software.ready, BRINGUP_TIMEOUT, "agent pair ready (one master agent, one backup agent)")
    return ha_lab


def agentctl_status(lab: HaLab, name: str) -> subprocess.CompletedProcess:
    socket = lab.software.control_socket(lab.gateways[name])
    return subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", socket, "status"],
                          capture_output=True, text=True, timeout=15)


def ha_metrics(lab: HaLab, name: str) -> dict[str, float]:
    with in_netns(lab.gateways[name].netns):
        response = urllib.request.urlopen(f"http://127.0.0.1:{AGENT_METRICS_PORT}/metrics", timeout=5)  # noqa: S310
    with response:
        text = response.read().decode()
    return {s.labels["state"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "space_vpn_ha_state"}


def table_220(lab: HaLab, name: str) -> str:
    return subprocess.run(["ip", "-n", lab.gateways[name].netns, "route", "show", "table", "220"],
                          capture_output=True, text=True).stdout.strip()


def assert_quiet_backup(lab: HaLab, name: str, watch_s: float = WATCH_S) -> None:
    """Conns loaded, and for watch_s: no SA at all (not even one being set up), no route."""
    gw = lab.gateways[name]
    assert {T1, T2} <= set(gateway_conns(gw))
    deadline = time.monotonic() + watch_s
    while time.monotonic() < deadline:
        assert gateway_sas(gw) == [], f"{name} (backup) holds or sets up an SA"
        assert table_220(lab, name) == "", f"{name} (backup) has routes in table 220"
        time.sleep(0.2)


def test_backup_initiates_nothing(lab: HaLab):
    """The master's agent carries the traffic; the backup's agent has its conns loaded
    and nothing else, says so in status (exit 0) and in /metrics."""
    master = lab.masters()[0]
    backup = lab.other(master)
    assert_quiet_backup(lab, backup)
    status = lab.software.agent(lab.gateways[backup]).status()
    assert status["ha"]["enabled"] is True and status["ha"]["state"] == "backup"
    assert lab.software.agent(lab.gateways[master]).status()["ha"]["state"] == "master"
    result = agentctl_status(lab, backup)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ha_metrics(lab, backup) == {"master": 0.0, "backup": 1.0, "fault": 0.0}
    assert ha_metrics(lab, master) == {"master": 1.0, "backup": 0.0, "fault": 0.0}
    assert lab.lan_ping(count=10, interval=0.02).received == 10


def test_master_power_off_backup_takes_over(lab: HaLab, tmp_path: Path):
    """Master powered off: the backup gets both VIPs, its agent becomes master and
    initiates both tunnels at once; traffic is back within AGENT_OUTAGE_BOUND_S and the
    space side holds exactly one IKE SA per tunnel (the dead node's were replaced)."""
    old = lab.masters()[0]
    new = lab.other(old)
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 3000, 0.01, tmp_path / "ping.out") as pinger:
        time.sleep(0.5)
        t0 = lab.power_off(old)
        lab.wait_for(lambda: lab.vips(new) == BOTH, TAKEOVER_BOUND_S, f"{new} holding both VIPs")
        lab.wait_for(lambda: sum(r > t0 for r in pinger.replies()) >= 5, AGENT_OUTAGE_BOUND_S + 5,
                     "traffic through the new master")
        time.sleep(1.0)
        pinger.stop()
    figures = gap_figures(pinger.replies(), t0)
    print(f"\nagent pair, power-off of {old}: outage {figures['outage_ms']} ms")
    assert figures["outage_ms"] is not None and figures["outage_ms"] <= AGENT_OUTAGE_BOUND_S * 1000
    assert lab.software.ha_state(lab.gateways[new]) == "master"
    sas = lab.space.sas()
    assert all(t.ike_state == "ESTABLISHED" and t.ike_sa_count == 1 for t in sas.values()), sas
    assert any(t.up for t in sas.values()), sas


def test_old_master_returns_and_nothing_moves(lab: HaLab, tmp_path: Path):
    """The old master boots again (nopreempt): the VIPs stay, its agent starts as backup,
    holds no SA and takes nothing from the far end; not one ping is lost."""
    master = lab.masters()[0]
    returning = lab.other(master)
    lab.power_off(returning)
    space_before = lab.space.sas()
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 1500, 0.01, tmp_path / "ping.out") as pinger:
        lab.power_on(returning)
        lab.wait_for(lambda: lab.software.ha_state(lab.gateways[returning]) == "backup", BRINGUP_TIMEOUT,
                     f"the agent on {returning} as backup")
        assert_quiet_backup(lab, returning)
        result = pinger.stop()
    assert lab.masters() == [master]
    # By sequence number: the echo in flight when the pinger is stopped is no loss.
    gaps = reply_gaps(pinger.output.read_text())
    assert result.received > 100 and gaps == [], (result, gaps)
    assert lab.space.sas() == space_before


def test_master_agent_crash_moves_the_pair(lab: HaLab, tmp_path: Path):
    """The master's agent is SIGKILLed (its charon runs on, SAs and all): keepalived's
    track script (`agentctl status` exit 3: no answer) faults the node, the VIPs move,
    the other agent initiates and the far end replaces the orphaned SAs. The crashed
    agent, started again, finds itself backup and terminates what its charon still
    holds."""
    old = lab.masters()[0]
    new = lab.other(old)
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 3000, 0.01, tmp_path / "ping.out") as pinger:
        time.sleep(0.5)
        t0 = time.time()
        lab.software.kill(lab.gateways[old])
        lab.wait_for(lambda: lab.vips(new) == BOTH, 10, f"{new} holding both VIPs after the agent on {old} died")
        lab.wait_for(lambda: lab.software.ha_state(lab.gateways[new]) == "master", 5, f"the agent on {new} master")
        lab.wait_for(lambda: sum(r > t0 for r in pinger.replies()) >= 5, AGENT_OUTAGE_BOUND_S + 10,
                     "traffic through the new master")
        time.sleep(0.5)
        pinger.stop()
    figures = gap_figures(pinger.replies(), t0)
    print(f"\nagent pair, agent SIGKILL on {old}: outage {figures['outage_ms']} ms")
    assert figures["outage_ms"] is not None
    lab.software.start(lab.gateways[old])
    lab.wait_for(lambda: lab.software.ha_state(lab.gateways[old]) == "backup", BRINGUP_TIMEOUT,
                 f"the restarted agent on {old} backup")
    lab.wait_for(lambda: gateway_sas(lab.gateways[old]) == [], 10, f"{old} without SAs")
    lab.wait_for(lambda: lab.gateways[old].keepalived.state() == "BACKUP", 15, f"keepalived on {old} BACKUP")
    assert lab.lan_ping(count=50, interval=0.02).received == 50


def test_master_lan_link_down_moves_the_pair(lab: HaLab, tmp_path: Path):
    """The master's LAN cable pulled: keepalived's LAN instance faults and the sync group
    takes the WAN VIP along; the agent there, told `fault`, terminates its SAs; the other
    agent takes over. Plugged back: the node is a quiet backup (nopreempt)."""
    old = lab.masters()[0]
    new = lab.other(old)
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 3000, 0.01, tmp_path / "ping.out") as pinger:
        time.sleep(0.5)
        t0 = time.time()
        lab.set_lan_link(old, up=False)
        lab.wait_for(lambda: lab.vips(new) == BOTH, TAKEOVER_BOUND_S, f"{new} holding both VIPs")
        lab.wait_for(lambda: sum(r > t0 for r in pinger.replies()) >= 5, AGENT_OUTAGE_BOUND_S + 5,
                     "traffic through the new master")
        lab.wait_for(lambda: gateway_sas(lab.gateways[old]) == [], 5, f"{old} without SAs")
        assert lab.software.ha_state(lab.gateways[old]) in ("fault", "backup")
        time.sleep(0.5)
        pinger.stop()
    figures = gap_figures(pinger.replies(), t0)
    print(f"\nagent pair, LAN link down on {old}: outage {figures['outage_ms']} ms")
    assert figures["outage_ms"] is not None and figures["outage_ms"] <= AGENT_OUTAGE_BOUND_S * 1000
    lab.set_lan_link(old, up=True)
    lab.wait_for(lambda: lab.software.ha_state(lab.gateways[old]) == "backup", 10, f"the agent on {old} backup")
    assert_quiet_backup(lab, old)
    assert lab.masters() == [new]


def wan_mac(lab: HaLab, name: str) -> str:
    out = subprocess.run(["ip", "-n", lab.gateways[name].netns, "-j", "link", "show", WAN_IFACE],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]["address"]


def agent_summary(lab: HaLab, name: str) -> str:
    return lab.software.agent(lab.gateways[name]).status()["connections"][0]["summary"]


def test_split_brain_one_node_yields_and_traffic_flows(lab: HaLab, tmp_path: Path):
    """VRRP blocked both ways: both keepalived go master and both agents with them. Each
    agent's guard sees the other answer ARP for the WAN VIP; the higher MAC yields (its
    SAs go, its yield file puts keepalived in FAULT, the VIPs leave it), the master's
    gratuitous ARPs bring the LAN and the far end back to the winner. While the split
    lasts, traffic flows through the winner; once VRRP passes again the loser is a quiet
    backup, and nothing more is lost."""
    macs = {name: wan_mac(lab, name) for name in lab.gateways}
    winner = min(macs, key=lambda n: bytes.fromhex(macs[n].replace(":", "")))
    loser = lab.other(winner)
    with TimedPinger(lab.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, 4000, 0.01, tmp_path / "ping.out") as pinger:
        time.sleep(0.5)
        t0 = time.time()
        lab.split_brain(True)
        lab.wait_for(lambda: lab.software.ha_state(lab.gateways[loser]) == "fault", 15,
                     f"{loser} (higher MAC {macs[loser]}) yielding")
        lab.wait_for(lambda: lab.masters() == [winner] and lab.vips(loser) == frozenset(), 5,
                     f"the VIPs on {winner} alone")
        # Once, on a loaded CI machine, the loser's status read keepalived's fault at this
        # point instead of the split brain (its yield had ended early; not explained yet):
        # the status must name the split brain and its winner within a few seconds.
        lab.wait_for(lambda: "split brain" in agent_summary(lab, loser) and macs[winner] in agent_summary(lab, loser),
                     5, f"{loser}'s status naming the split brain and {winner}")
        assert lab.gateways[loser].keepalived.state() == "FAULT"
        # The LAN and the far end learn the winner's MAC from its gratuitous ARPs (every
        # vrrp_garp_master_refresh, 2 s): a burst passing whole means both have.
        lab.wait_for(lambda: lab.lan_ping(count=10, interval=0.02, deadline=2.0).received == 10, 15,
                     f"traffic through {winner} while VRRP is still blocked")
        # While both held the address, the far end replaced the winner's SAs with the
        # loser's: the winner failed over, and a Quick Mode lost in that fight is
        # retransmitted by charon 4 s later; its make-before-break is the split's, not
        # the heal's. So the winner settles first (one tunnel carrying, one standby).
        lab.wait_for(lambda: settled(lab.software.agent(lab.gateways[winner]).status()), 15,
                     f"{winner}'s tunnels settled (one carrying, one standby)")
        assert lab.lan_ping(count=50, interval=0.02).received == 50
        assert gateway_sas(lab.gateways[loser]) == []
        t_heal = time.time()
        lab.split_brain(False)
        lab.wait_for(lambda: lab.software.ha_state(lab.gateways[loser]) == "backup", 10,
                     f"{loser} a backup again once VRRP passes")
        lab.wait_for(lambda: lab.gateways[loser].keepalived.state() == "BACKUP", 10, f"keepalived on {loser} BACKUP")
        assert lab.masters() == [winner]
        time.sleep(1.0)
        result = pinger.stop()
    gaps = reply_gaps(pinger.output.read_text())
    during = sum(g.ms for g in gaps if g.after < t_heal)
    after = [g for g in gaps if g.before > t_heal]
    print(f"\nsplit brain ({loser} yields): {during} ms without replies in the {t_heal - t0:.1f} s split, "
          f"{sum(g.ms for g in after)} ms after the heal "
          f"{[(round(g.after - t_heal, 3), g.lost) for g in after]}; {result}")
    assert sum(g.lost for g in after) <= 1, f"lost after the heal: {after}; {what_happened_after(lab, t_heal)}"
    assert_quiet_backup(lab, loser)


def settled(status: dict | None) -> bool:
    return bool(status) and any(is_redundant(status, active) for active in (1, 2))


def what_happened_after(lab: HaLab, t0: float) -> str:
    """VRRP transitions and agent log lines after t0, seconds from it, for a failure's message."""
    lines = []
    for name, gw in lab.gateways.items():
        lines += [f"{e.unix - t0:+.3f} {name} keepalived {e.state}" for e in gw.keepalived.events() if e.unix > t0 - 1]
        for line in lab.software.agent(gw).log_text().splitlines():
            try:
                at = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            except ValueError:
                continue
            if at > t0 - 1:
                lines.append(f"{at - t0:+.3f} {name} agent {line[24:][:160]}")
    return "\n".join(sorted(lines, key=lambda text: float(text.split()[0])))
