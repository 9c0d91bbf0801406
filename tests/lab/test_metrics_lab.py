"""/metrics in the lab: a real Prometheus server scrapes the agent and PromQL finds the
active tunnel; byte counters keep growing across a forced CHILD_SA rekey; a TCP probe's
round-trip time is exported per tunnel."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from space_vpn_lab.agent_process import is_redundant, tunnels_of
from space_vpn_lab.topology import APP_NAME, APP_PORT
from space_vpn_lab.netns import in_netns
from tests.lab.helpers import BRINGUP_TIMEOUT, T1, assert_no_secret

pytestmark = pytest.mark.lab

METRICS_PORT = 19813  # the default; the lab's namespace is the agent's own host
PROMETHEUS_PORT = 19090


def http_get(netns: str, url: str) -> str:
    """GET from inside the lab namespace (the socket is created there)."""
    with in_netns(netns):
        response = urllib.request.urlopen(url, timeout=5)  # noqa: S310 - lab-local URL
    with response:
        return response.read().decode()


def start_agent_with_metrics(make_agent, probe=None):
    agent = make_agent()
    config = yaml.safe_load(agent.config_path.read_text())
    config["metrics"] = {"listen": f"127.0.0.1:{METRICS_PORT}"}
    if probe is not None:
        config["connections"][0]["probe"] = probe
    agent.write_config(config)
    agent.start()
    agent.wait_for(is_redundant, BRINGUP_TIMEOUT)
    return agent


def scrape(netns: str) -> dict:
    text = http_get(netns, f"http://127.0.0.1:{METRICS_PORT}/metrics")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def tunnel_value(samples: dict, name: str, tunnel: str) -> float:
    return next(v for (n, labels), v in samples.items() if n == name and ("tunnel", tunnel) in labels)


@pytest.fixture
def prometheus(lab, tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the Debian package prometheus is not installed (packaging/dev-setup.sh installs it)")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "space-vpn-agent",
                                  "static_configs": [{"targets": [f"127.0.0.1:{METRICS_PORT}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = ["ip", "netns", "exec", lab.topology.cust_ns, binary, f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"]
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def promql(netns: str, query: str) -> list:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        answer = json.loads(http_get(netns, url))
    except (OSError, socket.timeout):
        return []
    return answer.get("data", {}).get("result", [])


def test_prometheus_scrapes_the_agent_and_finds_the_active_tunnel(lab, make_agent, prometheus, secrets_of):
    agent = start_agent_with_metrics(make_agent)
    ns = lab.topology.cust_ns
    deadline = time.monotonic() + 60
    result = []
    while time.monotonic() < deadline and not result:
        result = promql(ns, 'space_vpn_tunnel_active{space="acme-space",vpn="office"} == 1')
        time.sleep(1)
    assert [r["metric"]["tunnel"] for r in result] == ["1"]
    assert result[0]["metric"]["tunnel_ip"] == lab.tunnel_ips[0]
    up = promql(ns, 'up{job="space-vpn-agent"}')
    assert up and up[0]["value"][1] == "1"
    assert_no_secret(http_get(ns, f"http://127.0.0.1:{METRICS_PORT}/metrics"), secrets_of)
    agent.stop()


def test_counters_do_not_go_backwards_across_a_forced_rekey(lab, make_agent):
    agent = start_agent_with_metrics(make_agent)
    ns = lab.topology.cust_ns
    assert lab.customer_ping(count=20, interval=0.05).received == 20
    time.sleep(1.5)  # a pass or two after the traffic
    before = tunnel_value(scrape(ns), "space_vpn_tunnel_transmit_bytes_total", "1")
    assert before > 0

    with lab.customer_charon.connected() as session:
        session.rekey({"child": T1})  # a new CHILD_SA: charon's own counters start at 0
    time.sleep(3)
    assert lab.customer_ping(count=5, interval=0.05).received == 5
    time.sleep(1.5)
    after = tunnel_value(scrape(ns), "space_vpn_tunnel_transmit_bytes_total", "1")
    assert after > before
    agent.stop()


def test_tcp_probe_round_trip_time_is_exported(lab, make_agent):
    lab.name_app()
    agent = start_agent_with_metrics(make_agent, probe={"target": APP_NAME, "port": APP_PORT, "interval": "200ms"})
    agent.wait_for(lambda s: tunnels_of(s)[1]["probe_sent"] >= 3, 10)
    samples = scrape(lab.topology.cust_ns)
    assert 0 < tunnel_value(samples, "space_vpn_tunnel_probe_rtt_seconds", "1") < 0.2
    assert tunnel_value(samples, "space_vpn_tunnel_probes_total", "1") >= 3
    assert tunnel_value(samples, "space_vpn_tunnel_probe_failures_total", "1") == 0
    agent.stop()
