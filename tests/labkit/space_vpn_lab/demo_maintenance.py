"""The demo's second act: what the product is for. A silent maintenance of the active
tunnel (the far end drops it without a word, as an AWS endpoint replacement does) while
a ping runs every 10 ms; the agent's failover printed as it happens, read from its own
status (the failover records it keeps); the traffic lost; then the tunnel's return as
the hot standby. `--compare` plays the same against plain strongSwan configured like
Heroku's article, in a lab of its own (the failover benchmark's scenario a).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from space_vpn_lab import bench, topology
from space_vpn_lab.agent_process import AgentProcess, is_redundant, tunnels_of
from space_vpn_lab.bench_scenarios import SCENARIOS
from space_vpn_lab.bench_timeline import TimedPinger, reply_gaps
from space_vpn_lab.lab import Lab

PING_INTERVAL_S = 0.01
FAILOVER_CAP_S = 30.0
AFTER_FAILOVER_S = 3.0  # traffic kept flowing this long after the failover, to show it does
RETURN_CAP_S = 90.0
POLL_S = 0.05


def active_tunnel(status: dict[str, Any]) -> int | None:
    return next((n for n, t in tunnels_of(status).items() if t["role"] == "active"), None)


def play_silent_maintenance(lab: Lab, agent: AgentProcess, workdir: Path,
                            say: Callable[[str], None] = print) -> dict[str, Any]:
    """Returns what happened (ms lost, failover and return times, from the drop)."""
    status = agent.status() or {}
    dropped = active_tunnel(status) or 1
    other = 3 - dropped
    seen = len(status["connections"][0]["failovers"]) if status else 0
    result: dict[str, Any] = {"dropped": dropped, "failover_s": None, "return_s": None}
    with TimedPinger(lab.topology.cust_ns, topology.CUSTOMER_HOST_IP, topology.SPACE_HOST_IP,
                     bench.ping_count(FAILOVER_CAP_S + RETURN_CAP_S, PING_INTERVAL_S), PING_INTERVAL_S,
                     workdir / "maintenance-ping.out") as pinger:
        time.sleep(1.0)
        t0 = time.time()
        lab.space.silent_down(dropped)
        say(f"  0.000 s  far end: tunnel {dropped} dropped without a word (a silent maintenance)")
        deadline = time.monotonic() + FAILOVER_CAP_S
        while result["failover_s"] is None and time.monotonic() < deadline:
            status = agent.status() or {}
            failovers = status.get("connections", [{}])[0].get("failovers", []) if status else []
            for failover in failovers[seen:]:
                at = failover["at"] - t0
                say(f"{at:7.3f} s  agent: traffic moved from tunnel {failover['from_tunnel']} to tunnel "
                    f"{failover['to_tunnel']} ({failover['reason']})")
                result["failover_s"] = round(at, 3)
            seen = max(seen, len(failovers))
            time.sleep(POLL_S)
        time.sleep(AFTER_FAILOVER_S)
        pinger.stop()
    gaps = [g for g in reply_gaps(pinger.output.read_text()) if g.before > t0]
    result["lost"] = sum(g.lost for g in gaps)
    result["ms_lost"] = sum(g.ms for g in gaps)
    say(f"          traffic: {result['lost']} pings lost, {result['ms_lost']} ms without replies "
        f"(one ping every {PING_INTERVAL_S * 1000:g} ms)")
    lab.space.restore(dropped)
    restored_at = time.time()
    say(f"{restored_at - t0:7.3f} s  far end: tunnel {dropped} back (the maintenance is over)")
    try:
        agent.wait_for(lambda s: is_redundant(s, active=other), RETURN_CAP_S)
        result["return_s"] = round(time.time() - t0, 3)
        say(f"{result['return_s']:7.3f} s  agent: tunnel {dropped} re-initiated, the hot standby again")
    except TimeoutError:
        say(f"          agent: tunnel {dropped} not back within {RETURN_CAP_S:g} s (see agentctl status)")
    return result


def compare_with_strongswan(workroot: Path, ike_version: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The benchmark's silent scenario against the article's config, in a fresh lab."""
    spec = SCENARIOS["a"]
    say(f"\nThe same against plain strongSwan configured like Heroku's article "
        f"(a lab of its own, about {spec.traffic_s + 20:.0f} s) ...")
    record = bench.run_one("policy", spec, "strongswan", PING_INTERVAL_S, workroot, {}, 60.0, None,
                           ike_version=ike_version)
    if record.get("error"):
        say(f"  plain strongSwan run failed: {record['error']}")
    else:
        back = (f"redundancy back {record['restore_s']} s after the far end returned" if record["restore_s"]
                is not None else "tunnel never re-initiated: redundancy lost until someone acts")
        say(f"  plain strongSwan: {record['ms_lost']} ms of traffic lost in the {spec.traffic_s:g} s window; {back}")
    return record
