"""keepalived for the HA lab and the shipped example: the generated config says what the
lab relies on (VRRPv3, both nodes BACKUP with nopreempt, one sync group, its notify
script), the notify script records and forwards each state change, and both the lab's
config and config/keepalived.example.conf pass `keepalived --config-test` (run in a
throwaway network namespace that has the interfaces they name)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from space_vpn_lab.ha_lab import Gateway
from space_vpn_lab.ha_topology import GATEWAYS, HaTopology
from agent.config import HaConfig
from space_vpn_lab.keepalived import (Keepalived, VrrpEvent, VrrpNode, VrrpSettings, parse_events, render_config,
                                      render_notify_script)

TOP = Path(__file__).resolve().parents[2]
EXAMPLE = TOP / "config" / "keepalived.example.conf"


def node(**overrides) -> VrrpNode:
    fields = dict(name="gw1", priority=150, wan_iface="wan0", lan_iface="lan0", wan_ip="203.0.113.11",
                  lan_ip="172.16.0.252", peer_wan_ip="203.0.113.12", peer_lan_ip="172.16.0.253",
                  wan_vip="203.0.113.10", lan_vip="172.16.0.1", wan_prefixlen=24, lan_prefixlen=24)
    return VrrpNode(**{**fields, **overrides})


def instance(text: str, name: str) -> str:
    return re.search(r"vrrp_instance %s \{(.*?)\n\}" % name, text, re.S).group(1)


def test_lab_config_two_instances_in_one_sync_group():
    text = render_config(node(), VrrpSettings(), "/lab/gw1.notify.sh")
    assert "vrrp_version 3" in text and "enable_script_security" in text
    assert re.search(r'vrrp_sync_group HA \{\s+group \{\s+WAN\s+LAN\s+\}\s+notify "/lab/gw1.notify.sh"', text)
    wan, lan = instance(text, "WAN"), instance(text, "LAN")
    for body, iface, vip in ((wan, "wan0", "203.0.113.10/24"), (lan, "lan0", "172.16.0.1/24")):
        assert "state BACKUP" in body and "nopreempt" in body
        assert f"interface {iface}" in body and f"{vip} dev {iface}" in body
        assert "advert_int 0.2" in body and "priority 150" in body
        assert "unicast" not in body and "track_script" not in body
    assert "virtual_router_id 10" in wan and "virtual_router_id 11" in lan


def test_lab_config_options():
    text = render_config(node(), VrrpSettings(advert_int_s=1, preempt=True, unicast=True), "/n.sh", "/t.sh")
    wan, lan = instance(text, "WAN"), instance(text, "LAN")
    assert "nopreempt" not in text and "advert_int 1\n" in wan
    assert "unicast_src_ip 203.0.113.11" in wan and "203.0.113.12" in wan
    assert "unicast_src_ip 172.16.0.252" in lan and "172.16.0.253" in lan
    assert 'script "/t.sh"' in text and wan.count("chk_vpn") == 1 and lan.count("chk_vpn") == 1
    assert "track_file" not in text and "vrrp_garp_master_refresh 2" in text


def test_lab_config_tracks_the_agents_yield_file():
    """On both instances, as the track script (weight 0: a non-zero value is FAULT, as
    keepalived requires for a sync group's member)."""
    text = render_config(node(), VrrpSettings(), "/n.sh", track_file="/run/agent/ha-yield")
    assert 'file "/run/agent/ha-yield"' in text and "weight 0" in text
    assert "agent_yield" in instance(text, "WAN") and "agent_yield" in instance(text, "LAN")


@pytest.mark.parametrize("settings, message", [
    (dict(advert_int_s=0.001), "advert_int"),
    (dict(advert_int_s=300), "advert_int"),
])
def test_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        VrrpSettings(**settings)


@pytest.mark.parametrize("priority", [0, 255])
def test_priority_is_checked(priority):
    with pytest.raises(ValueError, match="priority"):
        node(priority=priority)


def test_a_script_path_with_a_quote_is_refused():
    with pytest.raises(ValueError, match="quote"):
        render_config(node(), VrrpSettings(), '/tmp/a"b.sh')


def run_notify(tmp_path: Path, agentctl: list[str] | None, state: str) -> Path:
    events = tmp_path / "gw1.events"
    script = tmp_path / "notify.sh"
    script.write_text(render_notify_script(str(events), agentctl, {"LAB_VAR": "x y"}))
    script.chmod(0o700)
    subprocess.run([str(script), "GROUP", "HA", state, "150"], check=True, timeout=10)
    return events


def test_notify_script_records_the_state_with_its_time(tmp_path: Path):
    events = run_notify(tmp_path, None, "MASTER")
    run_notify(tmp_path, None, "BACKUP")
    recorded = parse_events(events.read_text())
    assert [e.state for e in recorded] == ["MASTER", "BACKUP"]
    assert recorded[0].unix <= recorded[1].unix and recorded[0].unix > 1_600_000_000


@pytest.mark.parametrize("state, word", [("MASTER", "master"), ("BACKUP", "backup"), ("FAULT", "fault"),
                                         ("STOP", "backup")])
def test_notify_script_tells_the_agent(tmp_path: Path, state: str, word: str):
    events = run_notify(tmp_path, ["/bin/echo", "agentctl", "--socket", "/lab/control sock"], state)
    told = Path(f"{events}.agentctl").read_text()
    assert told == f"agentctl --socket /lab/control sock ha {word}\n"


def test_parse_events_skips_what_it_cannot_read():
    assert parse_events("1.5 HA MASTER\ngarbage\nx HA BACKUP\n2.0 HA FAULT\n") == [
        VrrpEvent(1.5, "MASTER"), VrrpEvent(2.0, "FAULT")]


# --- keepalived --config-test -----------------------------------------------------------------

def config_test_unavailable() -> str | None:
    if shutil.which("keepalived") is None:
        return "keepalived is not installed (packaging/dev-setup.sh installs it)"
    if os.geteuid() != 0:
        return "the config test runs keepalived in a new network namespace (root)"
    return None


@pytest.fixture
def config_test():
    reason = config_test_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)

    def check(path: Path) -> subprocess.CompletedProcess:
        """`keepalived -t -f PATH` in an anonymous network namespace (gone with the
        process) holding veth links named like the interfaces the config uses."""
        names = sorted(set(re.findall(r"^\s*interface (\S+)", path.read_text(), re.M)))
        links = " && ".join(f"ip link add {a} type veth peer name {a}p" for a in names)
        return subprocess.run(["unshare", "-n", "sh", "-c", f'{links} && exec keepalived -t -f "$0"', str(path)],
                              capture_output=True, text=True, timeout=30)
    return check


def test_lab_config_passes_keepalived_config_test(tmp_path: Path, config_test):
    gw = Gateway(GATEWAYS[0], GATEWAYS[1], HaTopology("unit"), tmp_path, VrrpSettings(), "/bin/false")
    daemon = Keepalived("gw1", "unused", tmp_path, VrrpSettings(unicast=True))
    daemon.write(gw.vrrp_node, agentctl=["/bin/true"], track=["/bin/true"], track_file=str(tmp_path / "ha-yield"))
    result = config_test(daemon.conf_path)
    assert result.returncode == 0, result.stderr


def test_example_passes_keepalived_config_test(config_test):
    result = config_test(EXAMPLE)
    assert result.returncode == 0, result.stderr


def test_config_test_catches_a_mistake(tmp_path: Path, config_test):
    broken = tmp_path / "broken.conf"
    broken.write_text(EXAMPLE.read_text().replace("advert_int 0.2", "advert_intervall 0.2", 1))
    assert config_test(broken).returncode != 0


def test_example_is_the_pair_the_docs_describe():
    text = EXAMPLE.read_text()
    settings = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert settings.count("nopreempt") == 2 and settings.count("state BACKUP") == 2
    for hook in ("master", "backup", "fault"):
        assert f'notify_{hook} "/usr/bin/agentctl ha {hook}"' in text
    assert "vrrp_sync_group" in text and "agentctl status" in text
    assert "203.0.113.10/24" in text and "172.16.0.1/24" in text
    # The split-brain guard: the agent's yield file (its default ha.yield_file) puts the
    # group in FAULT, and the master re-announces its addresses.
    assert f'file "{HaConfig.yield_file}"' in text and "weight 0" in settings
    assert "init_file 0 overwrite" in settings
    assert any(s.startswith("vrrp_garp_master_refresh") for s in settings)
