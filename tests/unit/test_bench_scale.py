"""The scale benchmark's pure parts: every further lab VPN gets addresses of its own,
clear of the lab's other VPNs, and the report says each figure against its goal."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from space_vpn_lab import bench_scale, topology
from space_vpn_lab.topology import SCALE_MAX_VPNS, scale_vpn_addresses


def test_every_further_vpn_has_its_own_endpoints_and_cidrs_clear_of_the_others():
    every = [scale_vpn_addresses(n) for n in range(SCALE_MAX_VPNS)]
    endpoints = [ip for a in every for ip in a.tunnel_ips]
    taken = {*topology.TUNNEL_IPS, *topology.OTHER_VPN_TUNNEL_IPS}
    assert len(set(endpoints)) == len(endpoints) and taken.isdisjoint(endpoints)
    lab_tunnels = ipaddress.ip_network(topology.TUNNEL_CIDR)
    assert all(ipaddress.ip_address(ip) in lab_tunnels for ip in endpoints)
    cidrs = [ipaddress.ip_network(c) for a in every for c in (a.space_cidr, a.routable_cidr)]
    cidrs += [ipaddress.ip_network(c) for c in (topology.SPACE_CIDR, topology.ROUTABLE_CIDR,
                                                  topology.OTHER_SPACE_CIDR, topology.SECOND_ROUTABLE_CIDR)]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(cidrs, 2))
    for a in every:
        assert ipaddress.ip_address(a.space_host_ip) in ipaddress.ip_network(a.space_cidr)
        assert ipaddress.ip_address(a.customer_host_ip) in ipaddress.ip_network(a.routable_cidr)
        assert ipaddress.ip_network(a.space_cidr).is_private and ipaddress.ip_network(a.routable_cidr).is_private


def test_the_lab_has_room_for_so_many_and_no_more():
    with pytest.raises(ValueError):
        scale_vpn_addresses(SCALE_MAX_VPNS)
    with pytest.raises(ValueError):
        scale_vpn_addresses(-1)


def run(n: int, pass_s: float, cpu: float, rss: float) -> dict:
    def summary(value):
        return {"median": value, "min": value, "max": value, "n": 10}
    return {"connections": n, "tunnels": 2 * n, "cold_start_redundant_s": 1.5, "cold_start_traffic_s": 1.9,
            "pings_crossed": n, "pass_s": summary(pass_s), "scrape_s": summary(0.004), "status_s": summary(0.06),
            "rss_mb": rss, "idle_cpu_percent": cpu, "idle_window_s": 30.2, "idle_passes": n // 5}


def test_the_report_gives_each_figure_against_its_goal_and_per_connection():
    report = {"generated_at": "2026-12-03T12:00:00+00:00", "command": "space-vpn-lab bench-scale --connections 5,50",
              "duration_s": 100.0, "machine": {"cpus": 2, "loadavg": "0.5 0.4 0.3"}, "settle_s": 10, "idle_s": 30,
              "samples": 10, "runs": [run(5, 0.004, 0.4, 40.0), run(50, 0.040, 3.0, 49.0),
                                       {"connections": 100, "tunnels": 200, "error": "timed out"}]}
    text = bench_scale.format_markdown(report)
    assert "| pass | <= 1 s | 4.0 ms (met) | 40.0 ms (met) | n/a |" in text
    assert "| idle CPU | <= 1 % of a core | 0.40 % (met) | 3.00 % (missed) | n/a |" in text
    assert "| 50 | 0.800 ms | 0.080 ms | 0.060 % | 205 kB |" in text  # 9 MB over 45 more connections
    assert "| 100 | 200 | failed: timed out |" in text
    assert "| 0.40 % | 1 in 30 s |" in text and "| 3.00 % | 10 in 30 s |" in text


class _Statuses:
    """agentctl status as the loop publishes it: a pass every third read, then none."""

    def __init__(self, reads_per_pass: int, passes: int) -> None:
        self.reads, self.reads_per_pass, self.passes = 0, reads_per_pass, passes

    def status(self) -> dict:
        done = min(self.passes, 1 + self.reads // self.reads_per_pass)
        self.reads += 1
        return {"passes": done, "pass_seconds": done / 1000}


def test_pass_durations_count_each_pass_once_and_give_up_in_time(monkeypatch):
    monkeypatch.setattr(bench_scale.time, "sleep", lambda _s: None)
    assert bench_scale.pass_durations(_Statuses(3, 100), 4) == [0.001, 0.002, 0.003, 0.004]
    assert bench_scale.pass_durations(_Statuses(3, 2), 4, limit_s=0.05) == [0.001, 0.002]
