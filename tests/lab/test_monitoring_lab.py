"""packaging/monitoring/ against a real Prometheus scraping the lab agent through a
failover: every dashboard panel's query and the failover annotation return data, and
every alerting rule is accepted by Prometheus and names only metrics the agent exports."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml

from space_vpn_lab.agent_process import is_redundant, tunnels_of
from space_vpn_lab.fake_api import SPACE, VPN
from space_vpn_lab.topology import APP_NAME, APP_PORT
from tests.lab.helpers import BRINGUP_TIMEOUT
from tests.lab.test_metrics_lab import PROMETHEUS_PORT, http_get, prometheus, start_agent_with_metrics  # noqa: F401

pytestmark = pytest.mark.lab

MONITORING = Path(__file__).resolve().parents[2] / "packaging" / "monitoring"
#: What Grafana would put in for its own variables, at the lab's 1 s scrape.
GRAFANA = {"$__rate_interval": "10s", "$__interval": "5m", "$space": SPACE, "$vpn": VPN}
#: Families that exist only with ha.enabled; this lab runs one gateway.
HA_ONLY = {"space_vpn_ha_state"}


def query(netns: str, expr: str) -> dict:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.loads(http_get(netns, url))
    except OSError as e:  # a 400 (bad query) comes as an HTTPError: its body says why
        body = getattr(e, "read", lambda: b"")()
        return json.loads(body) if body else {"status": "error", "error": str(e)}


def scrapes(netns: str) -> int:
    """How many scrapes of the agent Prometheus holds from the last minute."""
    result = query(netns, "space_vpn_ready[1m]").get("data", {}).get("result", [])
    return len(result[0]["values"]) if result else 0


def grafana_expr(expr: str) -> str:
    for variable, value in GRAFANA.items():
        expr = expr.replace(variable, value)
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((MONITORING / "dashboard.json").read_text())
    found = [(f"panel {p['title']!r} {t['refId']}", t["expr"]) for p in board["panels"] for t in p["targets"]]
    found += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"]]
    return found


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_every_panel_and_rule_query_works_through_a_failover(lab, make_agent, prometheus):  # noqa: F811
    lab.name_app()
    agent = start_agent_with_metrics(make_agent, probe={"target": APP_NAME, "port": APP_PORT, "interval": "200ms"})
    ns = lab.topology.cust_ns
    assert lab.customer_ping(count=20, interval=0.05).received == 20
    # Prometheus starts slower than the agent: it must see the healthy pair (and every
    # counter at 0) before the failover, or changes() has nothing to compare with.
    deadline = time.monotonic() + 30
    while scrapes(ns) < 3:
        assert time.monotonic() < deadline, "Prometheus did not scrape the agent"
        time.sleep(0.5)
    lab.space.silent_down(1)
    agent.wait_for(lambda s: tunnels_of(s)[2]["role"] == "active", 30)
    assert lab.customer_ping(count=20, interval=0.05).received >= 15
    lab.space.restore(1)
    agent.wait_for(lambda s: is_redundant(s, active=2), BRINGUP_TIMEOUT)
    assert lab.customer_ping(count=20, interval=0.05).received == 20
    time.sleep(12)  # every rate() window (10 s) holds samples from after the failover

    empty = []
    for where, expr in dashboard_queries():
        answer = query(ns, grafana_expr(expr))
        assert answer.get("status") == "success", f"{where}: {answer.get('error')}: {expr}"
        if not answer["data"]["result"]:
            empty.append(f"{where}: {expr}")
    failovers = {r["metric"]["reason"]: [v for _, v in r["values"]][-3:] for r in query(
        ns, f'space_vpn_failovers_total{{space="{SPACE}",vpn="{VPN}"}}[2m]')["data"]["result"]}
    assert not empty, "queries without data:\n" + "\n".join(empty) + f"\nfailovers_total over 2m: {failovers}"

    exported = {r["metric"]["__name__"] for r in query(ns, 'group by (__name__) ({__name__=~"space_vpn_.+"})')
                ["data"]["result"]}
    for alert, expr in rule_exprs():
        answer = query(ns, expr)
        assert answer.get("status") == "success", f"{alert}: {answer.get('error')}"
        for name in set(re.findall(r"\bspace_vpn_\w+", expr)) - HA_ONLY:
            assert name in exported, f"{alert} uses {name}, which the agent does not export"
    agent.stop()
