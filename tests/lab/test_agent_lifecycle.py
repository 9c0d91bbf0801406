"""Life around the tunnels: charon restarts, signals, reloads, PSK rotation, static
connections, IKEv2, systemd notification, and no secret in any output."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from space_vpn_lab import topology
from space_vpn_lab.agent_process import AgentProcess, is_redundant, tunnels_of, write_secret_file
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.lab import generate_psk
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, T2, assert_no_secret, customer_sas

pytestmark = pytest.mark.lab


def test_charon_restart_reloads_and_brings_both_tunnels_back(lab, make_agent):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)

    lab.customer_charon.kill()
    status = agent.wait_for(lambda s: not s["charon_reachable"], 10)
    conn = agent.wait_for(lambda s: s["connections"][0]["health"] == "down", 10)["connections"][0]
    assert conn["summary"].startswith("charon unreachable"), conn["summary"]
    lab.customer_charon.start()
    agent.wait_for(lambda s: s["charon_reachable"] and is_redundant(s), BRINGUP_TIMEOUT)
    assert lab.customer_ping(count=20, interval=0.05).received == 20
    assert "charon went away" in agent.log_text() or "charon unreachable" in agent.log_text()
    assert agent.running() and status["ready"]


def test_sigterm_exits_cleanly_and_leaves_tunnels_up(lab, make_agent):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    child = customer_sas(lab)[T1].installed_child

    assert agent.stop() == 0
    time.sleep(1)
    sas = customer_sas(lab)
    assert sas[T1].installed_child.uniqueid == child.uniqueid
    assert sas[T2].ike_state == "ESTABLISHED"
    assert lab.customer_ping(count=3, interval=0.2).received == 3


@pytest.mark.parametrize("break_it, words", [
    (lambda path, good: path.write_text(good.replace("mode: auto", "mode: sideways")), "mode"),
    (lambda path, good: path.write_text(good + "\nbroken: [unclosed\n"), "YAML syntax error"),
    (lambda path, good: path.unlink(), "No such file"),
], ids=["bad-value", "broken-yaml", "missing-file"])
def test_sighup_with_an_invalid_config_keeps_the_running_one(lab, make_agent, break_it, words):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    good = agent.config_path.read_text()
    child = customer_sas(lab)[T1].installed_child

    break_it(agent.config_path, good)
    agent.signal(signal.SIGHUP)
    status = agent.wait_for(lambda s: s["errors"], 10)
    assert words in status["errors"][0], status["errors"]
    assert is_redundant(status)
    assert "keeping the running config" in agent.log_text()
    assert lab.customer_ping(count=10, interval=0.05).received == 10
    assert customer_sas(lab)[T1].installed_child.spi_in == child.spi_in  # nothing re-created

    agent.config_path.write_text(good)  # a valid reload clears the error
    agent.signal(signal.SIGHUP)
    agent.wait_for(lambda s: not s["errors"] and is_redundant(s), 10)


def test_reload_unloads_only_its_own_objects_that_are_no_longer_configured(lab, make_agent, tmp_path):
    foreign = {"local_addrs": [topology.CUSTOMER_PUBLIC_IP], "remote_addrs": ["198.51.100.77"],
               "local": {"auth": "psk"}, "remote": {"auth": "psk"}, "children": {"foreign": {}}}
    with lab.customer_charon.connected() as session:
        session.load_conn({"someone-elses": foreign})
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)

    # The same tunnels, now as a static connection under another name.
    config = yaml.safe_load(agent.config_path.read_text())
    tunnels = []
    for number, (ip, psk) in enumerate(zip(lab.tunnel_ips, lab.psks), start=1):
        tunnels.append({"ip": ip, "psk_file": str(write_secret_file(tmp_path / f"psk{number}", psk))})
    config["connections"] = [{
        "vpn": "moved", "local_address": topology.CUSTOMER_PUBLIC_IP,
        "static": {"ike_version": 1, "routable_cidrs": [topology.ROUTABLE_CIDR],
                   "space_cidr_block": topology.SPACE_CIDR, "tunnels": tunnels},
    }]
    agent.write_config(config)
    agent.signal(signal.SIGHUP)
    status = agent.wait_for(lambda s: s["connections"][0]["vpn"] == "moved" and is_redundant(s), BRINGUP_TIMEOUT)

    with lab.customer_charon.connected() as session:
        conns = set(session.get_conns()["conns"])
    conns = {c.decode() if isinstance(c, bytes) else c for c in conns}
    assert conns == {"someone-elses", "svpn-static-moved-t1", "svpn-static-moved-t2"}
    assert set(customer_sas(lab)) == {"svpn-static-moved-t1", "svpn-static-moved-t2"}
    assert status["connections"][0]["source"] == "static"


def test_psk_rotation_rolls_one_tunnel_at_a_time(lab, make_agent, fake_api, secrets_of):
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    old = customer_sas(lab)
    old_ids = {n: old[n].established_ike.uniqueid for n in (T1, T2)}

    new_psks = [generate_psk(), generate_psk()]
    lab.space.reconfigure(psks=new_psks)
    for number, psk in enumerate(new_psks, start=1):
        fake_api.set_psk(SPACE, VPN, number, psk)

    def re_established(status):
        sas = customer_sas(lab)
        fresh = all(n in sas and sas[n].established_ike and sas[n].established_ike.uniqueid != old_ids[n]
                    for n in (T1, T2))
        return fresh and is_redundant(status, active=2)

    # Tunnel 2 (standby) takes the new key first, traffic moves to it, then tunnel 1 follows.
    status = agent.wait_for(re_established, BRINGUP_TIMEOUT)
    assert [(f["kind"], f["from_tunnel"], f["to_tunnel"]) for f in status["connections"][0]["failovers"]] == [
        ("roll", 1, 2)]
    assert lab.customer_ping(count=3, interval=0.2).received == 3
    assert_no_secret(agent.log_text(), (*secrets_of, *new_psks))


def test_static_connection_without_the_platform_api(lab, tmp_path):
    workdir = tmp_path / "static"
    workdir.mkdir()
    tunnels = []
    for number, (ip, psk) in enumerate(zip(lab.tunnel_ips, lab.psks), start=1):
        write_secret_file(workdir / f"psk{number}", psk)
        tunnels.append({"ip": ip, "psk_file": str(workdir / f"psk{number}")})
    config = {
        "strongswan": {"vici_socket": lab.customer_charon.vici_socket},
        "state_dir": str(workdir / "state"),
        "control_socket": str(workdir / "control.sock"),
        "metrics": {"listen": ""},
        "connections": [{
            "vpn": "aws-office",
            "local_address": topology.CUSTOMER_PUBLIC_IP,
            "mode": "policy",
            "static": {"ike_version": 1, "routable_cidrs": [topology.ROUTABLE_CIDR],
                       "space_cidr_block": topology.SPACE_CIDR, "tunnels": tunnels},
        }],
    }
    agent = AgentProcess(workdir, lab.topology.cust_ns, config)
    agent.start()
    try:
        status = agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
        assert status["connections"][0]["source"] == "static"
        assert status["connections"][0]["mode_reason"] == "configured"
        assert lab.customer_ping(count=3, interval=0.2).received == 3
        assert_no_secret(agent.log_text() + repr(status), lab.psks)
    finally:
        agent.stop()


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_ikev2_standby_is_a_childless_ike_sa(lab, make_agent):
    agent = make_agent()
    agent.start()
    status = agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    sas = customer_sas(lab)
    assert sas[T1].established_ike.version == 2
    assert sas[T2].established_ike is not None and sas[T2].children == ()
    assert tunnels_of(status)[2]["child_state"] == "NONE"
    assert lab.customer_ping(count=3, interval=0.2).received == 3


@pytest.mark.parametrize("lab", [2], indirect=True)
def test_ikev2_standby_against_a_peer_without_childless_support(lab, make_agent):
    lab.space.reconfigure(childless="never")
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    sas = customer_sas(lab)
    assert sas[T2].established_ike is not None and sas[T2].children == ()
    assert lab.customer_ping(count=3, interval=0.2).received == 3
    assert "IKE SA only" in agent.log_text()  # it tried childless first


def test_tells_systemd_it_is_ready_and_pets_the_watchdog(lab, make_agent, tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notify_path)
        sock.settimeout(BRINGUP_TIMEOUT)
        agent = make_agent()
        agent.start(env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "30000000"})
        agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
        seen: list[str] = []
        while not any("READY=1" in m for m in seen) or not any("WATCHDOG=1" in m for m in seen):
            seen.append(sock.recv(4096).decode())
    assert any("STATUS=" in m for m in seen)


def test_no_secret_in_any_output(lab, make_agent, fake_api, secrets_of, tmp_path):
    """Drive the agent through errors and commands, then sweep every captured output:
    agent log, agentctl text and JSON, check-config, both charon logs."""
    agent = make_agent()
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    fake_api.fail_next(2, status=500, error_id="internal_server_error")
    fake_api.set_token("HRKU-rotated-elsewhere")
    agent.wait_for(lambda s: s["connections"][0]["api_error"], 20)
    outputs = [agent.log_text()]
    for args in (["status"], ["status", "--json"], ["reload"]):
        run = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, *args],
                             capture_output=True, text=True, timeout=10)
        outputs += [run.stdout, run.stderr]
    check = subprocess.run([sys.executable, "-m", "agent.daemon.main", "check-config", "--config",
                            str(agent.config_path)], capture_output=True, text=True, timeout=10)
    outputs += [check.stdout, check.stderr]
    outputs += [lab.customer_charon.log_path.read_text(errors="replace"),
                lab.space_charon.log_path.read_text(errors="replace")]
    cache_files = list((agent.workdir / "state").iterdir())
    assert cache_files and all(os.stat(f).st_mode & 0o777 == 0o600 for f in cache_files)
    assert all(outputs[:2]) and "OK" in check.stdout
    for text in outputs:
        assert_no_secret(text, secrets_of)
    assert yaml.safe_load(agent.config_path.read_text())["api"]["token_file"]  # token via file, not argv
    with open(f"/proc/{agent.pid}/cmdline", "rb") as f:
        assert_no_secret(f.read().decode(errors="replace"), secrets_of)


def test_route_mode_on_a_kernel_without_xfrm_interfaces_is_refused(lab, make_agent):
    """The host lab's kernel has no XFRM interfaces (and no kernel ESP)."""
    agent = make_agent(mode="route")
    agent.start()
    deadline = time.monotonic() + 30
    while agent.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.stop() == 2
    log_text = agent.log_text()
    assert "mode: route is not possible here" in log_text and "XFRM interfaces" in log_text
    assert customer_sas(lab) == {}


def test_refuses_to_start_with_a_token_file_others_can_read(lab, make_agent, secrets_of):
    agent = make_agent()
    os.chmod(agent.workdir / "heroku-token", 0o644)
    agent.start()
    deadline = time.monotonic() + 30
    while agent.running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert agent.stop() == 2
    assert "chmod 600" in agent.log_text()
    assert_no_secret(agent.log_text(), secrets_of)
    assert customer_sas(lab) == {}
