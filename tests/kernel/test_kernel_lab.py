"""Kernel lab: one virtme-ng VM with Debian's kernel runs every scenario (the manual
ones of space_vpn_lab.kernel_scenarios and the agent-driven ones of
space_vpn_lab.kernel_agent_scenarios: kernel ESP, XFRM interfaces); each expected check is a test.
The VM boots when collection ends and runs alongside the host's lab tests (conftest.py).
Without vng or a kernel these tests skip locally and fail when CI is set.
"""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1200)]

#: Every check each scenario must record; a missing one is a failure.
EXPECTED: dict[str, tuple[str, ...]] = {
    "manual_route_mode": (
        "children_installed", "space_children_installed",
        "ping_answer_via_tunnel1", "ping_answer_via_tunnel2",
        "no_tmpl_mismatch", "no_in_no_pols",
        "silent_down_moves_space_route", "silent_down_loses_until_route_moves",
        "ping_after_customer_route_moves",
    ),
    "manual_policy_mismatch": (
        "children_installed", "one_shared_policy", "ping_answer_via_policy_tunnel",
        "replies_via_other_tunnel_dropped", "tmpl_mismatch_grows",
        "policy_repointed", "one_child_restores_replies",
    ),
    "agent_route_mode": (
        "both_children_installed", "auto_picks_route", "routes_active_and_standby", "mss_clamped",
        "ping_answered_via_tunnel1", "ping_answered_via_tunnel2",
        "no_XfrmInTmplMismatch", "no_XfrmInNoPols", "probes_pass_on_both_tunnels",
        "tcp_probe_tunnel1_answered_via_tunnel2", "tcp_probe_syns_reach_the_app_via_tunnel2",
        "tcp_probe_tunnel2_answered_via_tunnel1", "tcp_probe_syns_reach_the_app_via_tunnel1",
        "restart_ready", "restart_keeps_interfaces", "restart_keeps_sas", "restart_keeps_routes",
        "restart_loses_nothing",
        "failover_moves_active_to_tunnel2", "failover_route_via_tunnel2", "failover_keeps_interface1_up",
        "failover_traffic_resumes", "endpoint_returns_as_standby",
        "telemetry_down_moves_to_tunnel1", "telemetry_down_traffic_continues",
        "drain_moves_to_tunnel2", "drain_traffic_continues", "undrain",
        "graceful_moves_to_tunnel1", "graceful_traffic_continues", "graceful_fast_reroute",
        "graceful_tunnel_returns", "forgotten_ike_sa_replaced",
        "psk_roll_moves_to_the_rolled_standby", "psk_roll_both_tunnels_on_new_keys", "psk_roll_traffic_continues",
        "reordered_answer_recreates_no_sa", "reordered_answer_moves_no_route", "reordered_answer_loses_nothing",
        "failed_stage_shown_with_heroku_message", "failed_agentctl_status_exits_2", "failed_keeps_what_runs",
        "failed_then_active_recreates_nothing",
        "cidr_update_both_tunnels_on_new_selectors", "cidr_update_keeps_ike_sas", "cidr_update_moves_no_route",
        "cidr_update_loses_at_most_40_ms",
        "charon_killed_status_down", "charon_killed_routes_kept", "charon_restart_both_tunnels_back",
        "charon_restart_traffic",
    ),
    "agent_route_mode_wide_selectors": (
        "not_found_right_after_create_waits", "pending_waits_and_loads_nothing",
        "wide_both_children_installed", "wide_selectors_negotiated", "wide_policies_bound_to_if_id",
        "wide_routes_only_the_space_cidr",
        "wide_ping_from_first_cidr_via_tunnel1", "wide_ping_from_second_cidr_via_tunnel1",
        "wide_ping_from_first_cidr_via_tunnel2", "wide_ping_from_second_cidr_via_tunnel2",
        "wide_other_traffic_not_captured",
        "wide_no_XfrmInNoPols", "wide_no_XfrmOutPolBlock", "wide_no_XfrmInTmplMismatch",
    ),
    "agent_policy_mode_kernel": (
        "one_child_and_hot_standby", "ping_through_policy_mode", "no_XfrmInTmplMismatch", "single_child",
    ),
}
CASES = [(s, c) for s, checks in EXPECTED.items() for c in checks]


def _check(results: dict, scenario: str, check: str) -> dict:
    entry = results.get("scenarios", {}).get(scenario)
    if entry is None:
        pytest.fail(f"scenario {scenario} did not run; VM error: {results.get('error')}")
    for recorded in entry["checks"]:
        if recorded["name"] == check:
            return recorded
    others = [c for c in entry["checks"] if not c["ok"]]
    pytest.fail(f"check {check} not recorded in {scenario}; failed checks: {others}")


@pytest.mark.parametrize(("scenario", "check"), CASES, ids=[f"{s}.{c}" for s, c in CASES])
def test_check(vm_results: dict, scenario: str, check: str) -> None:
    recorded = _check(vm_results, scenario, check)
    assert recorded["ok"], f"{scenario}.{check}: {recorded['detail']}"


def test_no_unexpected_failure(vm_results: dict) -> None:
    """Catches a crash, or a failing check (of any scenario) this file does not list yet."""
    unexpected = [f"{name}.{c['name']}: {c['detail']}"
                  for name, entry in vm_results.get("scenarios", {}).items()
                  for c in entry["checks"]
                  if not c["ok"] and c["name"] not in EXPECTED.get(name, ())]
    assert not unexpected, unexpected


def test_vm_completed(vm_results: dict) -> None:
    assert vm_results.get("error") is None, vm_results.get("error")
    assert vm_results.get("complete") is True
    assert vm_results.get("kernel"), "results carry no kernel version"
