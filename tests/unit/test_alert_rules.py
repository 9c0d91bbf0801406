"""packaging/monitoring/alerts.yml under `promtool test rules`: for every alert, series
in and alerts out, firing where it should and silent just before (its `for:` or
threshold).

The cases are written here and turned into promtool's test file; each expected alert
carries the rule's own static annotations (runbook, threshold) and the summary the
case expects, so a rule's text is checked once without being copied into the test.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.unit.tools import required_tool

RULES = Path(__file__).resolve().parents[2] / "packaging" / "monitoring" / "alerts.yml"
AGENT = {"instance": "gw1:19813", "job": "space-vpn-agent"}
CONN = {**AGENT, "space": "acme", "vpn": "office"}


def series(name: str, labels: dict[str, str], values: str) -> dict:
    inside = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inside}}}", "values": values}


@dataclass(frozen=True)
class Case:
    alert: str
    input_series: list[dict]
    fires_at: str  # eval time where it fires
    silent_at: str  # eval time where it does not (yet)
    labels: dict[str, str]  # the alert's labels, severity excluded
    summary: str
    interval: str = "1m"
    extra: list[dict] = field(default_factory=list)  # more (eval_time, exp_alerts) checks


CASES = [
    Case("SpaceVpnAgentDown", [series("up", AGENT, "1 0x5")], "3m", "2m", AGENT,
         "space-vpn-agent on gw1:19813 does not answer scrapes"),
    Case("SpaceVpnAgentNotScraped", [series("up", {"instance": "x", "job": "other"}, "1x20")], "11m", "9m",
         {"job": "space-vpn-agent"},
         "no space-vpn-agent target is scraped"),
    Case("SpaceVpnAgentStuck",
         # Published every minute until minute 2, then never again.
         [series("space_vpn_snapshot_timestamp_seconds", AGENT, "0 60 120 120x5")], "5m", "4m", AGENT,
         "space-vpn-agent on gw1:19813 has not completed a pass for over a minute"),
    Case("SpaceVpnCharonDown", [series("space_vpn_charon_up", AGENT, "1 0x3")], "2m", "1m", AGENT,
         "charon does not answer the agent on gw1:19813"),
    Case("SpaceVpnConnectionDown", [series("space_vpn_connection_health", CONN, "0 2x5")], "3m", "2m", CONN,
         "VPN acme/office: no tunnel carries traffic"),
    Case("SpaceVpnRedundancyLost", [series("space_vpn_connection_health", CONN, "0 1x40")], "31m", "30m", CONN,
         "VPN acme/office runs on one tunnel"),
    Case("SpaceVpnFailoverFlapping",
         [series("space_vpn_failovers_total", {**CONN, "reason": "probe"}, "0+1x10"),
          # Planned moves do not count, however many.
          series("space_vpn_failovers_total", {**CONN, "reason": "drain"}, "0+5x10")],
         "10m", "6m", {"instance": "gw1:19813", "space": "acme", "vpn": "office"},
         "VPN acme/office failed over 10 times in an hour"),
    Case("SpaceVpnApiFailing",
         [series("space_vpn_api_last_success_timestamp_seconds", CONN, "0x30"),
          series("space_vpn_api_errors_total", {**CONN, "kind": "timeout"}, "0+1x30")],
         "16m", "15m", CONN,
         "Platform API has not answered for VPN acme/office for over 15 minutes"),
    Case("SpaceVpnWaitingForHeroku",
         [series("space_vpn_connection_stage", {**CONN, "stage": "waiting"}, "1x40"),
          series("space_vpn_connection_stage", {**CONN, "stage": "active"}, "0x40")],
         "30m", "29m", {**CONN, "stage": "waiting"}, "VPN acme/office has been waiting for 30 minutes"),
    Case("SpaceVpnConnectionFailed",
         [series("space_vpn_connection_stage", {**CONN, "stage": "failed"}, "0 1x10")],
         "6m", "5m", {**CONN, "stage": "failed"}, "VPN acme/office is failed at Heroku"),
    Case("SpaceVpnApiRateLimitLow", [series("space_vpn_api_rate_limit_remaining", AGENT, "4500 400x15")],
         "11m", "10m", AGENT, "Heroku API budget low on gw1:19813: 400 calls left"),
    Case("SpaceVpnStandbyProbesFailing",
         [series("space_vpn_tunnel_probes_total", {**CONN, "tunnel": "2", "tunnel_ip": "198.51.100.2"}, "0+10x30"),
          series("space_vpn_tunnel_probe_failures_total", {**CONN, "tunnel": "2", "tunnel_ip": "198.51.100.2"},
                 "0+8x30"),
          series("space_vpn_tunnel_active", {**CONN, "tunnel": "2", "tunnel_ip": "198.51.100.2"}, "0x30"),
          # The active tunnel loses as many: not this alert's business.
          series("space_vpn_tunnel_probes_total", {**CONN, "tunnel": "1", "tunnel_ip": "198.51.100.1"}, "0+10x30"),
          series("space_vpn_tunnel_probe_failures_total", {**CONN, "tunnel": "1", "tunnel_ip": "198.51.100.1"},
                 "0+8x30"),
          series("space_vpn_tunnel_active", {**CONN, "tunnel": "1", "tunnel_ip": "198.51.100.1"}, "1x30")],
         "20m", "10m", {**CONN, "tunnel": "2", "tunnel_ip": "198.51.100.2"},
         "VPN acme/office: probes through standby tunnel 2 fail"),
    Case("SpaceVpnConnectionErrors",
         [series("space_vpn_connection_errors_total", {**CONN, "stage": "apply"}, "0 0 0 1 1 1")],
         "4m", "2m", {**CONN, "stage": "apply"},
         "space-vpn-agent hit unexpected errors on VPN acme/office (apply)"),
    Case("SpaceVpnHaNoBackup",
         # gw2's agent is last scraped at minute 2 (gone from queries 5 minutes later);
         # gw1 stays master.
         [series("space_vpn_ha_state", {**CONN, "state": "master"}, "1x25"),
          series("space_vpn_ha_state", {**CONN, "state": "backup"}, "0x25"),
          series("space_vpn_ha_state", {**CONN, "instance": "gw2:19813", "state": "backup"}, "1 1 1 _x22")],
         "19m", "16m", {"space": "acme", "vpn": "office"}, "HA pair for VPN acme/office has no ready backup"),
    Case("SpaceVpnHaSplitBrain",
         [series("space_vpn_ha_state", {**CONN, "state": "master"}, "1x10"),
          series("space_vpn_ha_state", {**CONN, "instance": "gw2:19813", "state": "master"}, "0 0 1x8")],
         "4m", "2m", {"space": "acme", "vpn": "office"}, "both gateways are master for VPN acme/office"),
]


def rules_by_name() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def promtool_tests(cases: list[Case]) -> dict:
    rules = rules_by_name()
    tests = []
    for case in cases:
        rule = rules[case.alert]
        static = {k: v for k, v in rule["annotations"].items() if "{{" not in v}
        expected = {"exp_labels": {**case.labels, **rule["labels"]},
                    "exp_annotations": {**static, "summary": case.summary}}
        tests.append({
            "name": case.alert,
            "interval": case.interval,
            "input_series": case.input_series,
            "alert_rule_test": [
                {"eval_time": case.silent_at, "alertname": case.alert, "exp_alerts": []},
                {"eval_time": case.fires_at, "alertname": case.alert, "exp_alerts": [expected]},
                *case.extra,
            ],
        })
    return {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}


def require_promtool() -> str:
    return required_tool("promtool", "prometheus")


def test_every_alert_has_a_case_and_a_runbook():
    rules = rules_by_name()
    assert sorted(rules) == sorted(case.alert for case in CASES)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert {"summary", "runbook", "threshold"} <= set(rule["annotations"]), name


def test_rules_check():
    result = subprocess.run([require_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_when_it_should_and_not_before(tmp_path):
    promtool = require_promtool()
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(promtool_tests(CASES), sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_a_wrong_expectation_fails(tmp_path):
    """The harness can fail: a case expecting the wrong summary is caught by promtool."""
    promtool = require_promtool()
    broken = [Case(**{**vars(CASES[4]), "summary": "something else"})]
    test_file = tmp_path / "broken_test.yml"
    test_file.write_text(yaml.safe_dump(promtool_tests(broken), sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0 and "SpaceVpnConnectionDown" in result.stdout + result.stderr
