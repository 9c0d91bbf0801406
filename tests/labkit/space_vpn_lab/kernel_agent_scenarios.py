"""Kernel-lab scenarios that drive the real agent (inside the VM, Debian's kernel):
route mode end to end with TCP probes at the space's internal-routing app (answered
over either tunnel), its restart and failover, IKEv1 with two routable CIDRs over wide
selectors in route mode, and policy mode on kernel ESP.

Run as `python -m space_vpn_lab.kernel_agent_scenarios --results DIR`: registers these
next to the manual scenarios of kernel_scenarios and runs them all, one VM boot.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from contextlib import ExitStack

from agent.core.netstate import ACTIVE_METRIC, STANDBY_METRIC, interface_name
from space_vpn_lab import kernel_scenarios as ks
from space_vpn_lab.agent_process import AgentProcess, heroku_agent_config, is_redundant, tunnels_of, write_secret_file
from space_vpn_lab.fake_api import SPACE, VPN, FakePlatformApi, start_fake_api
from space_vpn_lab.lab import Lab, generate_psk
from space_vpn_lab.space_side import conn_name as space_conn_name
from space_vpn_lab.topology import (APP_HOST_IPS, APP_PORT, CUSTOMER_HOST_IP, CUSTOMER_PUBLIC_IP, ROUTABLE_CIDR,
                                    SECOND_CUSTOMER_HOST_IP, SECOND_ROUTABLE_CIDR, SPACE_CIDR, SPACE_HOST_IP,
                                    SPACE_PUBLIC_IP)
from space_vpn_lab.traffic import Pinger, ping

KEY = f"{SPACE}-{VPN}"
IF1, IF2 = interface_name(KEY, VPN, 1), interface_name(KEY, VPN, 2)
T1, T2 = f"svpn-{KEY}-t1", f"svpn-{KEY}-t2"
UP_TIMEOUT = 120  # s; TCG emulation makes modp2048 and Python start-up slow
#: Route mode probes like a real Private Space needs: TCP to the app (which answers no ping).
TCP_PROBE = {"target": APP_HOST_IPS[0], "port": APP_PORT, "interval": "300ms", "failures": 3}
ICMP_PROBE = {"target": SPACE_HOST_IP, "interval": "300ms", "failures": 3}


def start_agent(stack: ExitStack, ctx: ks.ScenarioContext, lab: Lab, *, mode: str, probe: dict = ICMP_PROBE,
                connection: dict | None = None,
                before_start=lambda api: None) -> tuple[AgentProcess, FakePlatformApi]:
    """The agent against the lab's fake API; `connection` adds keys to its connection,
    `before_start` sets the fake's stage before the agent's first request."""
    token = "HRKU-" + secrets.token_hex(16)
    api = stack.enter_context(start_fake_api(lab, token))
    before_start(api)
    workdir = ctx.workdir / "agent"
    workdir.mkdir(parents=True, exist_ok=True)
    write_secret_file(workdir / "heroku-token", token)
    config = heroku_agent_config(
        workdir, api_url=api.url, vici_socket=lab.customer_charon.vici_socket, space=SPACE, vpn=VPN,
        local_address=CUSTOMER_PUBLIC_IP, mode=mode,
    )
    config["connections"][0]["probe"] = dict(probe)
    config["connections"][0].update(connection or {})
    agent = AgentProcess(workdir, lab.topology.cust_ns, config)
    stack.callback(agent.stop)
    agent.start()
    return agent, api


def both_children(status: dict) -> bool:
    tunnels = tunnels_of(status)
    return len(tunnels) == 2 and all(t["child_state"] == "INSTALLED" for t in tunnels.values())


def routes(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "route", "show", SPACE_CIDR], capture_output=True, text=True).stdout
    return [" ".join(line.split()) for line in out.splitlines()]


def link_index(netns: str, name: str) -> str | None:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", name], capture_output=True, text=True)
    return out.stdout.split(":", 1)[0] if out.returncode == 0 else None


def link_up(netns: str, name: str) -> bool:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show", name], capture_output=True, text=True).stdout
    return ",UP" in out or "<UP" in out


def child_ids(lab: Lab) -> dict[str, str]:
    with lab.customer_charon.connected() as session:
        events = list(session.list_sas())
    ids = {}
    for event in events:
        for name, ike in event.items():
            for child in ike.get("child-sas", {}).values():
                ids[name] = child["uniqueid"].decode()
    return ids


def wait(agent: AgentProcess, predicate, timeout: float = UP_TIMEOUT) -> tuple[bool, str]:
    try:
        agent.wait_for(predicate, timeout, interval=0.3)
        return True, ""
    except (TimeoutError, RuntimeError) as e:
        return False, str(e)[-600:]


@ks.scenario("agent_route_mode")
def agent_route_mode(ctx: ks.ScenarioContext) -> None:
    """The agent in route mode (`mode: auto` on this kernel): interfaces, both
    children, routes, replies over either tunnel, restart adoption, failover."""
    with ExitStack() as stack:
        lab = stack.enter_context(ctx.lab(space_route_based=True))
        ns = lab.topology.cust_ns
        agent, api = start_agent(stack, ctx, lab, mode="auto", probe=TCP_PROBE)
        ok, detail = wait(agent, lambda s: both_children(s) and routes(ns) and len(routes(ns)) == 2)
        if not ctx.check("both_children_installed", ok, detail):
            return
        status = agent.status()
        conn = status["connections"][0]
        ctx.check("auto_picks_route", conn["mode"] == "route", conn["mode_reason"])
        want = [(IF1, ACTIVE_METRIC), (IF2, STANDBY_METRIC)]
        seen = [(r.split(" dev ")[1].split()[0], int(r.split(" metric ")[1].split()[0])) for r in routes(ns)]
        ctx.check("routes_active_and_standby", seen == want and all(f"src {CUSTOMER_HOST_IP}" in r for r in routes(ns)),
                  repr(routes(ns)))
        nft = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "space_vpn_agent"],
                             capture_output=True, text=True).stdout
        ctx.check("mss_clamped", f'oifname "{IF1}"' in nft and "maxseg size set 1379" in nft, nft[-300:])

        before = ks.xfrm_stat(ns)
        for number in (1, 2):
            lab.space.answer_via(number)
            result = ks.customer_ping(lab)
            ctx.check(f"ping_answered_via_tunnel{number}", result.received == result.transmitted == 5,
                      f"{result.received}/{result.transmitted}")
        after = ks.xfrm_stat(ns)
        for key in ("XfrmInTmplMismatch", "XfrmInNoPols"):
            grew = ks.stat_growth(before, after, key)
            ctx.check(f"no_{key}", grew == 0, f"{key} grew by {grew}")
        ok, detail = wait(agent, lambda s: all(t["probe_sent"] > 2 and t["probe_healthy"]
                                              for t in tunnels_of(s).values()), 30)
        ctx.check("probes_pass_on_both_tunnels", ok, detail)
        _tcp_probes_answered_over_the_other_tunnel(ctx, lab, agent)

        _restart_adopts(ctx, lab, agent)
        _silent_failover(ctx, lab, agent)
        _endpoint_returns(ctx, lab, agent)
        _telemetry_down(ctx, lab, agent, api)
        _drain(ctx, lab, agent)
        _graceful(ctx, lab, agent)
        _forgotten_before_quick_mode(ctx, lab, agent)
        _psk_roll(ctx, lab, agent, api)
        _reordered(ctx, lab, agent, api)
        _failed_keeps_running(ctx, lab, agent, api)
        _cidr_update(ctx, lab, agent, api)
        _charon_restart(ctx, lab, agent)


def ike_ids(lab: Lab) -> dict[str, str]:
    with lab.customer_charon.connected() as session:
        events = list(session.list_sas())
    return {name: ike["uniqueid"].decode() for event in events for name, ike in event.items()}


def agentctl(agent: AgentProcess, *args: str) -> int:
    return subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "--socket", agent.control_socket, *args],
                          capture_output=True, text=True, timeout=30).returncode


def _reordered(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, api: FakePlatformApi) -> None:
    """The API lists the tunnels the other way round (and back): tunnels are known by
    their IP, so no SA is re-created and nothing is lost."""
    ids, ikes, before_routes = child_ids(lab), ike_ids(lab), routes(lab.topology.cust_ns)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=500, interval=0.02) as pinger:
        for _ in range(2):
            api.reorder_tunnels(SPACE, VPN)
            time.sleep(5)  # two polls at 2 s and their passes
        result = pinger.stop()
    ctx.check("reordered_answer_recreates_no_sa", child_ids(lab) == ids and ike_ids(lab) == ikes,
              f"children {ids} -> {child_ids(lab)}, IKE {ikes} -> {ike_ids(lab)}")
    ctx.check("reordered_answer_moves_no_route", routes(lab.topology.cust_ns) == before_routes,
              repr(routes(lab.topology.cust_ns)))
    ctx.check("reordered_answer_loses_nothing", result.transmitted > 100 and result.lost == 0,
              f"{result.received}/{result.transmitted} at 20 ms")


def _failed_keeps_running(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, api: FakePlatformApi) -> None:
    """Heroku reports the connection failed (its body then lists no tunnels): status says
    so with Heroku's message and `agentctl status` exits 2, and what runs stays running;
    back to active, nothing was re-created."""
    ids = child_ids(lab)
    message = "supplied CIDR block already in use"
    api.set_connection_status(SPACE, VPN, "failed", message)
    try:
        ok, detail = wait(agent, lambda s: s["connections"][0]["stage"] == "failed", 30)
        conn = (agent.status() or {}).get("connections", [{}])[0]
        code = agentctl(agent, "status")
        during = ks.customer_ping(lab)
    finally:
        api.set_connection_status(SPACE, VPN, "active")
    ctx.check("failed_stage_shown_with_heroku_message",
              ok and message in conn.get("status_message", "") and message in conn.get("heroku_note", ""),
              f"{detail} stage {conn.get('stage')}, note {conn.get('heroku_note')!r}")
    ctx.check("failed_agentctl_status_exits_2", code == 2, f"exit {code}")
    ctx.check("failed_keeps_what_runs", child_ids(lab) == ids and during.received == during.transmitted == 5,
              f"children {ids} -> {child_ids(lab)}; ping {during.received}/{during.transmitted}")
    ok, detail = wait(agent, lambda s: s["connections"][0]["stage"] == "active" and both_children(s), 30)
    ctx.check("failed_then_active_recreates_nothing", ok and child_ids(lab) == ids, f"{detail} {child_ids(lab)}")


CHARON_RESTART_TRAFFIC_S = 10.0  # after both CHILD_SAs are listed again
CIDR_UPDATE = "172.16.0.0/12"  # one selector pair (IKEv1), a superset of the lab's /16


def _cidr_update(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, api: FakePlatformApi) -> None:
    """`heroku spaces:vpn:update --cidrs`: AWS takes the new selectors first, then the
    API says so. Each tunnel gets a CHILD_SA with the new selectors under its IKE SA
    before the old one goes: no route moves, no IKE SA is re-created, whichever tunnel
    the space side answers over. What is lost is bounded by our DELETE's trip: until
    the far end has processed it, its old policies (the more specific) want the old SA
    for what we already send over the new one. Under the VM's emulation that is one or
    two pings at 20 ms (XfrmInTmplMismatch on the space side); on a gateway, one RTT."""
    ns = lab.topology.cust_ns
    ikes, before_routes = ike_ids(lab), routes(ns)
    status = agent.status() or {}
    failovers = len(status.get("connections", [{}])[0].get("failovers", []))
    standby = next(n for n, t in tunnels_of(status).items() if t["role"] != "active")
    lab.space.answer_via(standby)  # the harder case: replies over the tunnel nobody routes to
    lab.space.reconfigure(remote_ts=CIDR_UPDATE)
    with Pinger(ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=1500, interval=0.02) as pinger:
        time.sleep(1)
        api.set_routable_cidrs(SPACE, VPN, [CIDR_UPDATE])
        done, detail = wait(agent, lambda s: both_children(s) and all(
            negotiated_selectors(lab.customer_charon, name) == ([CIDR_UPDATE], [SPACE_CIDR]) for name in (T1, T2))
            and len(child_ids(lab)) == 2, 60)
        time.sleep(1)
        result = pinger.stop()
    now = (agent.status() or {}).get("connections", [{}])[0]
    ctx.check("cidr_update_both_tunnels_on_new_selectors", done,
              f"{detail}; {[negotiated_selectors(lab.customer_charon, n) for n in (T1, T2)]}")
    ctx.check("cidr_update_keeps_ike_sas", ike_ids(lab) == ikes, f"{ikes} -> {ike_ids(lab)}")
    ctx.check("cidr_update_moves_no_route", routes(ns) == before_routes and len(now.get("failovers", [])) == failovers,
              f"{routes(ns)}; failovers {failovers} -> {len(now.get('failovers', []))}")
    ctx.check("cidr_update_loses_at_most_40_ms", result.transmitted > 100 and result.lost <= 2,
              f"lost {result.lost} of {result.transmitted} at 20 ms")


def _psk_roll(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, api: FakePlatformApi) -> None:
    """Heroku hands out new PSKs (a re-creation that kept the IPs): the standby takes
    them first, the route moves to it once it is up on them, then the other follows.
    AWS answers over a tunnel that is up: the space side is told to answer over the
    new active once the route moved."""
    status = agent.status() or {}
    active = next(n for n, t in tunnels_of(status).items() if t["role"] == "active")
    lab.space.answer_via(active)
    psks = [generate_psk(), generate_psk()]
    lab.space.reconfigure(psks=psks)
    with Pinger(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=600, interval=0.05) as pinger:
        time.sleep(0.5)
        for number, psk in enumerate(psks, start=1):
            api.set_psk(SPACE, VPN, number, psk)
        ok, detail = wait(agent, lambda s: tunnels_of(s)[3 - active]["role"] == "active", 60)
        lab.space.answer_via(3 - active)
        done, why = wait(agent, lambda s: both_children(s) and all(t["generation"] == 2 for t in tunnels_of(s).values()),
                         60)
        result = pinger.stop()
    failovers = (agent.status() or {}).get("connections", [{}])[0].get("failovers", [])
    last = failovers[-1] if failovers else {}
    ctx.check("psk_roll_moves_to_the_rolled_standby", ok and last.get("kind") == "roll",
              f"{detail} last failover: {last.get('kind')} {last.get('from_tunnel')} -> {last.get('to_tunnel')}")
    ctx.check("psk_roll_both_tunnels_on_new_keys", done, f"{why}; lost {result.lost} of {result.transmitted} at 50 ms")
    after = ks.customer_ping(lab)
    ctx.check("psk_roll_traffic_continues", result.received > 0 and after.received == 5,
              f"{after.received}/{after.transmitted} after")


def _tcp_probes_answered_over_the_other_tunnel(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    """AWS answers over the tunnel it picks: a probe sent through one tunnel's interface
    is answered over the other, and still counts (the probe thread's watcher sees the
    SYN-ACK on whichever interface it arrives). The SYNs reach the app; its pings would not."""
    for answering, probed in ((2, 1), (1, 2)):
        lab.space.answer_via(answering)
        time.sleep(1)  # probes in flight when the route changed settle first
        before, syns = tunnels_of(agent.status())[probed], lab.app.syns(APP_HOST_IPS[0])
        time.sleep(3)
        after = tunnels_of(agent.status())[probed]
        sent, lost = after["probe_sent"] - before["probe_sent"], after["probe_lost"] - before["probe_lost"]
        ctx.check(f"tcp_probe_tunnel{probed}_answered_via_tunnel{answering}",
                  sent >= 5 and lost == 0 and after["probe_rtt_ms"] is not None,
                  f"{sent} sent, {lost} lost, rtt {after['probe_rtt_ms']} ms")
        ctx.check(f"tcp_probe_syns_reach_the_app_via_tunnel{answering}", lab.app.syns(APP_HOST_IPS[0]) - syns >= sent,
                  f"{lab.app.syns(APP_HOST_IPS[0]) - syns} SYNs for {sent} probes of one tunnel")


def _charon_restart(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    """charon SIGKILLed: status says DOWN, charon unreachable, and the agent leaves the
    routes and interfaces alone (the kernel keeps its SAs); charon back, the agent loads
    and initiates both tunnels again and traffic flows."""
    ns = lab.topology.cust_ns
    before_routes = routes(ns)
    lab.customer_charon.kill()
    ok, detail = wait(agent, lambda s: not s["charon_reachable"] and s["connections"][0]["health"] == "down"
                      and s["connections"][0]["summary"].startswith("charon unreachable"), 30)
    ctx.check("charon_killed_status_down", ok, detail)
    time.sleep(2)  # passes with charon gone
    ctx.check("charon_killed_routes_kept", routes(ns) == before_routes and link_up(ns, IF1) and link_up(ns, IF2),
              repr(routes(ns)))
    lab.customer_charon.start()
    ok, detail = wait(agent, lambda s: s["charon_reachable"] and both_children(s))
    ctx.check("charon_restart_both_tunnels_back", ok, detail)
    # The far end replaces the dead charon's SAs as the new ones come up (unique=replace);
    # the agent sees both children a status poll late: traffic within a bound, not at once.
    back, tries, result = time.monotonic(), [], None
    while time.monotonic() - back < CHARON_RESTART_TRAFFIC_S:
        result = ks.customer_ping(lab, count=5, interval=0.1)
        tries.append(f"{result.received}/{result.transmitted}")
        if result.received == result.transmitted == 5:
            break
    ctx.check("charon_restart_traffic", result is not None and result.received == result.transmitted == 5,
              f"5/5 pings {time.monotonic() - back:.1f} s after both children were listed; tries {tries}")


def _restart_adopts(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    ns = lab.topology.cust_ns
    lab.space.answer_via(1)
    indexes = {name: link_index(ns, name) for name in (IF1, IF2)}
    ids, before_routes = child_ids(lab), routes(ns)
    with Pinger(ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=300, interval=0.05) as pinger:
        time.sleep(1)
        agent.kill()
        agent.start()
        ok, detail = wait(agent, lambda s: s["ready"] and both_children(s))
        time.sleep(3)  # a few passes of the restarted agent
        result = pinger.stop()
    ctx.check("restart_ready", ok, detail)
    ctx.check("restart_keeps_interfaces", {n: link_index(ns, n) for n in (IF1, IF2)} == indexes, repr(indexes))
    ctx.check("restart_keeps_sas", child_ids(lab) == ids, f"{ids} -> {child_ids(lab)}")
    ctx.check("restart_keeps_routes", routes(ns) == before_routes, repr(routes(ns)))
    ctx.check("restart_loses_nothing", result.transmitted > 50 and result.lost == 0,
              f"{result.received}/{result.transmitted}")


def _silent_failover(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    ns = lab.topology.cust_ns
    with Pinger(ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=400, interval=0.05) as pinger:
        time.sleep(1)
        lab.space.silent_down(1)  # the space side also answers over tunnel 2 from now on
        ok, detail = wait(agent, lambda s: tunnels_of(s)[2]["role"] == "active", 30)
        time.sleep(2)
        result = pinger.stop()
    ctx.check("failover_moves_active_to_tunnel2", ok, detail)
    ctx.check("failover_route_via_tunnel2", any(f"dev {IF2}" in r and f"metric {ACTIVE_METRIC}" in r
                                                for r in routes(ns)), repr(routes(ns)))
    ctx.check("failover_keeps_interface1_up", link_up(ns, IF1), "an interface taken down drops inbound")
    after = ks.customer_ping(lab)
    ctx.check("failover_traffic_resumes", after.received == after.transmitted == 5,
              f"{after.received}/{after.transmitted}; during failover lost {result.lost} of "
              f"{result.transmitted} at 50 ms ({result.lost * 50} ms)")


def _endpoint_returns(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    """After the silent loss, tunnel 1's endpoint comes back: the agent re-establishes
    it (its stale SAs were dropped) and both tunnels carry a CHILD_SA again."""
    lab.space.restore(1)
    ok, detail = wait(agent, lambda s: both_children(s) and all(t["probe_healthy"] for t in tunnels_of(s).values())
                      and tunnels_of(s)[1]["probe_sent"] > 0, 60)
    ctx.check("endpoint_returns_as_standby", ok, detail)


def _moves(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, name: str, to: int, act) -> None:
    """Run `act`, expect traffic on tunnel `to`, report the loss seen by a 50 ms ping."""
    ns = lab.topology.cust_ns
    with Pinger(ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=200, interval=0.05) as pinger:
        time.sleep(0.5)
        act()
        ok, detail = wait(agent, lambda s: tunnels_of(s)[to]["role"] == "active", 30)
        time.sleep(1)
        result = pinger.stop()
    status = agent.status() or {}
    failovers = status.get("connections", [{}])[0].get("failovers", [])
    reason = failovers[-1]["reason"] if failovers else "none"
    ctx.check(f"{name}_moves_to_tunnel{to}", ok, f"{detail} reason: {reason}; lost {result.lost} of "
              f"{result.transmitted} at 50 ms")
    after = ks.customer_ping(lab)
    ctx.check(f"{name}_traffic_continues", result.received > 0 and after.received == 5,
              f"{after.received}/{after.transmitted} after")


def _telemetry_down(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, api: FakePlatformApi) -> None:
    """AWS telemetry (the API's tunnel status) turns the active tunnel (2) DOWN while it
    still passes traffic: the route moves away from it all the same."""
    _moves(ctx, lab, agent, "telemetry_down", 1, lambda: api.set_tunnel_status(SPACE, VPN, 2, "DOWN", "maintenance"))
    api.set_tunnel_status(SPACE, VPN, 2, "UP")


def _drain(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    _moves(ctx, lab, agent, "drain", 2, lambda: agentctl(agent, "drain", "1"))
    ctx.check("undrain", agentctl(agent, "undrain", "1") == 0, "agentctl undrain 1")


def _graceful(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    """The space side deletes the active tunnel (2) gracefully and stays a responder:
    the route moves to tunnel 1 and tunnel 2 comes back with a CHILD_SA."""
    _moves(ctx, lab, agent, "graceful", 1, lambda: lab.space.graceful_down(2))
    # The event thread moved the route (FastReroute), not a pass that came later.
    rerouted = [line for line in agent.log_path.read_text().splitlines() if "routed via tunnel 1 in" in line]
    ctx.check("graceful_fast_reroute", bool(rerouted), rerouted[-1] if rerouted else "no fast reroute in the log")
    ok, detail = wait(agent, both_children, 30)
    ctx.check("graceful_tunnel_returns", ok, detail)


def _forgotten_before_quick_mode(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess) -> None:
    """Tunnel 2 (the standby) goes gracefully; the endpoint answers the agent's Main Mode,
    ignores its Quick Mode and forgets that IKE SA. Without a CHILD_SA the tunnel is no
    use in route mode, and every initiate queues behind a Quick Mode retransmitted into
    the void for minutes: the agent must drop that IKE SA and start afresh."""
    lab.space.ignore_quick_mode(2)
    try:
        lab.space.graceful_down(2)
        deadline = time.monotonic() + 30
        while lab.space.sas()[2].ike_state != "ESTABLISHED" and time.monotonic() < deadline:
            time.sleep(0.1)
        lab.space.forget(2)
    finally:
        lab.space.ignore_quick_mode(2, False)
    ok, detail = wait(agent, both_children, 40)  # charon alone: about 165 s of retransmits
    ctx.check("forgotten_ike_sa_replaced", ok, detail)


def negotiated_selectors(charon, name: str) -> tuple[list[str], list[str]] | None:
    """(local-ts, remote-ts) of the installed CHILD_SA of IKE SA `name`, None without one."""
    with charon.connected() as session:
        events = list(session.list_sas())
    for event in events:
        for ike_name, ike in event.items():
            for child in ike.get("child-sas", {}).values():
                if ike_name == name and child["state"] == b"INSTALLED":
                    return [ts.decode() for ts in child["local-ts"]], [ts.decode() for ts in child["remote-ts"]]
    return None


def _created_by_heroku(ctx: ks.ScenarioContext, lab: Lab, agent: AgentProcess, api: FakePlatformApi) -> None:
    """Right after `spaces:vpn:connect`: a 404, then `pending` without tunnels, then
    `active`. Until then the agent waits, says so, and loads nothing (no interface,
    no route, no SA)."""
    ns = lab.topology.cust_ns

    def nothing_loaded() -> bool:
        return not child_ids(lab) and not routes(ns) and link_index(ns, IF1) is None

    def stage(wanted: str):
        return lambda s: s["connections"][0]["stage"] == wanted

    ok, detail = wait(agent, stage("waiting"), 60)
    note = ((agent.status() or {}).get("connections") or [{}])[0].get("heroku_note", "")
    ctx.check("not_found_right_after_create_waits", ok and "not found yet" in note and nothing_loaded(),
              f"{detail} note {note!r}")
    api.set_connection_status(SPACE, VPN, "pending", "Provisioning the VPN connection")
    api.hide(SPACE, VPN, False)
    ok, detail = wait(agent, lambda s: "is pending" in s["connections"][0]["heroku_note"], 30)
    note = ((agent.status() or {}).get("connections") or [{}])[0].get("heroku_note", "")
    ctx.check("pending_waits_and_loads_nothing", ok and "Provisioning" in note and nothing_loaded(),
              f"{detail} note {note!r}")
    api.set_connection_status(SPACE, VPN, "active")


def xfrm_policies(netns: str) -> list[str]:
    """`ip xfrm policy` entries that use an SA (a template), one string each (a policy's
    lines joined); bypass policies have none."""
    out = subprocess.run(["ip", "-n", netns, "xfrm", "policy", "list"], capture_output=True, text=True).stdout
    entries: list[str] = []
    for line in out.splitlines():
        if line and not line[0].isspace():
            entries.append(line.strip())
        elif entries:
            entries[-1] += " " + line.strip()
    return [entry for entry in entries if " tmpl " in entry]


def tx_packets(netns: str, name: str) -> int:
    out = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", name], capture_output=True, text=True).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["packets"])


@ks.scenario("agent_route_mode_wide_selectors")
def agent_route_mode_wide_selectors(ctx: ks.ScenarioContext) -> None:
    """IKEv1 negotiates only a child's first selector, so a VPN with two routable CIDRs
    runs with wide selectors in route mode: 0.0.0.0/0 on both sides (the space side as
    AWS's VTI samples), policies bound to the XFRM interfaces' if_id, routes choosing what
    enters. Traffic from the second CIDR crosses over either tunnel, and traffic that is
    not routed into a tunnel interface stays outside the tunnels. No probe: the tunnel
    interfaces carry only what this scenario sends."""
    with ExitStack() as stack:
        lab = stack.enter_context(ctx.lab(space_route_based=True, space_wide_selectors=True,
                                          routable_cidrs=(ROUTABLE_CIDR, SECOND_ROUTABLE_CIDR)))
        ns = lab.topology.cust_ns
        agent, api = start_agent(stack, ctx, lab, mode="route", probe={}, connection={"traffic_selectors": "wide"},
                                 before_start=lambda api: api.hide(SPACE, VPN))
        _created_by_heroku(ctx, lab, agent, api)
        ok, detail = wait(agent, lambda s: both_children(s) and len(routes(ns)) == 2)
        if not ctx.check("wide_both_children_installed", ok, detail):
            return
        wide = (["0.0.0.0/0"], ["0.0.0.0/0"])
        seen = {name: negotiated_selectors(lab.customer_charon, name) for name in (T1, T2)}
        seen |= {f"space {n}": negotiated_selectors(lab.space_charon, space_conn_name(n)) for n in (1, 2)}
        ctx.check("wide_selectors_negotiated", all(ts == wide for ts in seen.values()), repr(seen))
        policies = xfrm_policies(ns)
        unbound = [p for p in policies if "if_id" not in p or "src 0.0.0.0/0 dst 0.0.0.0/0" not in p]
        ctx.check("wide_policies_bound_to_if_id", len(policies) >= 4 and not unbound,
                  f"{len(policies)} policies; unbound or narrow: {unbound[:2]}")
        tunnel_routes = subprocess.run(["ip", "-n", ns, "route", "show"], capture_output=True, text=True).stdout
        routed = [line for line in tunnel_routes.splitlines() if f"dev {IF1}" in line or f"dev {IF2}" in line]
        ctx.check("wide_routes_only_the_space_cidr", len(routed) == 2 and all(r.startswith(SPACE_CIDR) for r in routed),
                  repr(routed))

        before = ks.xfrm_stat(ns)
        for number in (1, 2):
            lab.space.answer_via(number)
            for label, source in (("first", CUSTOMER_HOST_IP), ("second", SECOND_CUSTOMER_HOST_IP)):
                result = lab.customer_ping(source=source)
                ctx.check(f"wide_ping_from_{label}_cidr_via_tunnel{number}", result.received == result.transmitted == 5,
                          f"from {source}: {result.received}/{result.transmitted}")
        lab.space.answer_via(1)

        # Outside traffic: the space's public address is reached over the veth, in clear.
        sent = {name: tx_packets(ns, name) for name in (IF1, IF2)}
        result = ping(ns, CUSTOMER_PUBLIC_IP, SPACE_PUBLIC_IP, count=5, interval=0.2)
        grew = {name: tx_packets(ns, name) - sent[name] for name in (IF1, IF2)}
        ctx.check("wide_other_traffic_not_captured", result.received == 5 and not any(grew.values()),
                  f"{result.received}/5 to {SPACE_PUBLIC_IP}; tunnel interfaces sent {grew} more")
        after = ks.xfrm_stat(ns)
        for key in ("XfrmInNoPols", "XfrmOutPolBlock", "XfrmInTmplMismatch"):
            grown = ks.stat_growth(before, after, key)
            ctx.check(f"wide_no_{key}", grown == 0, f"{key} grew by {grown}")


@ks.scenario("agent_policy_mode_kernel")
def agent_policy_mode_kernel(ctx: ks.ScenarioContext) -> None:
    """The policy-mode model on a real kernel: one CHILD_SA, hot standby, traffic flows
    and no reply fails the inbound template check."""
    with ExitStack() as stack:
        lab = stack.enter_context(ctx.lab())
        ns = lab.topology.cust_ns
        agent, _api = start_agent(stack, ctx, lab, mode="policy")
        ok, detail = wait(agent, is_redundant)
        if not ctx.check("one_child_and_hot_standby", ok, detail):
            return
        before = ks.xfrm_stat(ns)
        result = ks.customer_ping(lab, count=10)
        after = ks.xfrm_stat(ns)
        ctx.check("ping_through_policy_mode", result.received == result.transmitted == 10,
                  f"{result.received}/{result.transmitted}")
        grew = ks.stat_growth(before, after, "XfrmInTmplMismatch")
        ctx.check("no_XfrmInTmplMismatch", grew == 0, f"grew by {grew}")
        ctx.check("single_child", list(child_ids(lab)) == [T1], repr(child_ids(lab)))


if __name__ == "__main__":
    sys.exit(ks.main())
