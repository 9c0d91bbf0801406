"""The two systems under test in the failover benchmark: the agent (a process in the
customer namespace, fake Platform API beside it) and plain strongSwan configured like the
seed. Both answer the same calls: start, redundant, active_tunnel, announce, drain, details,
and Heroku's changes from the Platform API (update_cidrs, reorder, recreate), which plain
strongSwan never hears of.
"""

from __future__ import annotations

import logging
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import vici

from space_vpn_lab.agent_process import (
    AgentProcess,
    heroku_agent_config,
    is_redundant,
    tunnels_of,
    write_secret_file,
)
from space_vpn_lab.bench_report import BASELINE_DATA_PATH, IKE_VERSION
from space_vpn_lab.fake_api import SPACE, VPN, start_fake_api
from space_vpn_lab.lab import Lab
from space_vpn_lab.space_side import PROPOSAL, Lifetimes
from space_vpn_lab.topology import (
    CUSTOMER_HOST_IP,
    CUSTOMER_PUBLIC_IP,
    ROUTABLE_CIDR,
    SPACE_CIDR,
    APP_HOST_IPS,
    APP_PORT,
    SPACE_HOST_IP,
    TUNNEL_IPS,
)
from space_vpn_lab.traffic import ping

log = logging.getLogger(__name__)

SYSTEMS = ("agent", "strongswan")
# The agent's data-path probe per --probe: ICMP at a host that answers ping, a TCP
# connect to the internal-routing app (as in a real Private Space), or none at all
# (liveness from IKE only).
PROBES: dict[str, dict[str, Any] | None] = {
    "icmp": {"target": SPACE_HOST_IP, "interval": "100ms", "failures": 3},
    "tcp": {"target": APP_HOST_IPS[0], "port": APP_PORT, "interval": "100ms", "failures": 3},
    "none": None,
}
PROBE = PROBES["icmp"]
INITIATE_TIMEOUT_MS = 20_000
POLL_S = 0.1


class BenchError(Exception):
    """A step of a run failed; the run records the message and the next one goes on."""


def sa_ids(lab: Lab) -> dict[str, str]:
    """The customer charon's established IKE SAs and installed CHILD_SAs, by name, with
    their unique ids: an SA that was re-created has a new id."""
    with lab.customer_charon.connected(timeout_s=5.0) as session:
        entries = list(session.list_sas())
    ids: dict[str, str] = {}
    for entry in entries:
        for name, ike in entry.items():
            if ike.get("state") == b"ESTABLISHED":
                ids[f"IKE {name}"] = ike["uniqueid"].decode()
            for child in (ike.get("child-sas") or {}).values():
                if child.get("state") == b"INSTALLED":
                    ids[f"CHILD {child['name'].decode()}"] = child["uniqueid"].decode()
    return ids


def space_redundant(lab: Lab) -> bool:
    """The far end's own view: both tunnels hold an IKE SA, one carries a child. It
    catches a customer side that still believes in an SA the space forgot."""
    sas = lab.space.sas()
    return all(t.ike_state == "ESTABLISHED" for t in sas.values()) and any(t.up for t in sas.values())


class AgentSystem:
    """The agent as a process in the customer namespace, fake API beside it."""

    name = "agent"
    follows_api = True

    def __init__(self, lab: Lab, workdir: Path, stack: ExitStack, mode: str, probe: str = "icmp") -> None:
        self.lab, self.workdir, self.stack, self.mode, self.probe = lab, workdir, stack, mode, probe
        self.api = None
        self.agent: AgentProcess | None = None

    def start(self, timeout: float) -> None:
        token = "HRKU-bench-" + secrets.token_hex(16)
        self.api = self.stack.enter_context(start_fake_api(self.lab, token))
        write_secret_file(self.workdir / "heroku-token", token)
        config = heroku_agent_config(
            self.workdir, api_url=self.api.url, vici_socket=self.lab.customer_charon.vici_socket,
            space=SPACE, vpn=VPN, local_address=CUSTOMER_PUBLIC_IP, mode=self.mode)  # API polled at the default 30 s
        if PROBES[self.probe] is not None:
            config["connections"][0]["probe"] = dict(PROBES[self.probe])
        self.agent = AgentProcess(self.workdir, self.lab.topology.cust_ns, config)
        self.stack.callback(self.agent.stop)
        self.agent.start()
        self.agent.wait_for(self._redundant_status, timeout, interval=0.2)

    def _redundant_status(self, status: dict[str, Any]) -> bool:
        if self.mode == "route":
            tunnels = tunnels_of(status)
            return (len(tunnels) == 2 and all(t["child_state"] == "INSTALLED" for t in tunnels.values())
                    and status["connections"][0]["health"] == "ok")
        return is_redundant(status, 1) or is_redundant(status, 2)

    def redundant(self) -> bool:
        status = self.agent.status()
        return status is not None and self._redundant_status(status)

    def active_tunnel(self) -> int:
        status = self.agent.status() or {"connections": [{"tunnels": []}]}
        active = [n for n, t in tunnels_of(status).items() if t["role"] == "active"]
        return active[0] if active else 1

    def announce(self, number: int, down: bool) -> str:
        status, message = ("DOWN", "maintenance") if down else ("UP", "")
        self.api.set_tunnel_status(SPACE, VPN, number, status, message)
        return f"API tunnel {number} {status}"

    def drain(self, number: int, undo: bool = False) -> str:
        verb = "undrain" if undo else "drain"
        argv = [sys.executable, "-m", "agent.cli.agentctl", "--socket", self.agent.control_socket, verb, str(number)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
        if result.returncode != 0:
            raise BenchError(f"agentctl {verb} {number} failed (exit {result.returncode}): "
                             f"{result.stderr.strip()[-200:]}")
        return f"agentctl {verb} {number}"

    def update_cidrs(self, cidrs: list[str]) -> str:
        self.api.set_routable_cidrs(SPACE, VPN, cidrs)
        return f"API routable_cidrs {','.join(cidrs)}"

    def reorder(self) -> str:
        self.api.reorder_tunnels(SPACE, VPN)
        return "API lists the tunnels the other way round"

    def recreate(self, stage: str, psks: list[str] | None = None, tunnel_ips: list[str] | None = None) -> str:
        """One stage of a re-creation as the API shows it: gone (404), pending, active."""
        if stage == "gone":
            self.api.hide(SPACE, VPN)
            return "API 404 (VPN destroyed)"
        if stage == "pending":
            self.api.hide(SPACE, VPN, False)
            self.api.recreate(SPACE, VPN, psks=psks, tunnel_ips=tunnel_ips, status="pending")
            return "API pending (new VPN)"
        self.api.set_connection_status(SPACE, VPN, "active")
        return "API active with the new PSKs and tunnel IPs"

    def after_window(self, spec_key: str) -> dict[str, Any]:
        return {}

    def details(self) -> dict[str, Any]:
        status = self.agent.status() if self.agent else None
        conn = status["connections"][0] if status and status.get("connections") else {}
        gaps = [b - a for a, b in zip(self.api.request_times, self.api.request_times[1:])] if self.api else []
        return {"agent_mode": conn.get("mode"), "failovers": conn.get("failovers"),
                "final_health": conn.get("health"), "final_summary": conn.get("summary"),
                "final_generation": conn.get("generation"),
                "api_poll_s": round(statistics.median(gaps), 2) if gaps else None}


def seed_name(number: int) -> str:
    return f"vpn{number}"


#: The article's ikelifetime=28800s, lifetime=1h, rekeyed 9 min (charon's margin) early.
ARTICLE_LIFETIMES = Lifetimes(ike_s=28800, child_s=3600, child_rekey_s=3060)


def seed_conn(number: int, ike_version: int = IKE_VERSION, lifetimes: Lifetimes = ARTICLE_LIFETIMES) -> dict[str, Any]:
    """The article's `conn vpnN`, translated per strongswan-vici.md (lab addresses);
    `lifetimes` other than the article's only for the soak's many rekeys."""
    tunnel_ip = TUNNEL_IPS[number - 1]
    child = {"mode": "tunnel", "local_ts": [ROUTABLE_CIDR], "remote_ts": [SPACE_CIDR],
             "esp_proposals": [PROPOSAL], "life_time": f"{lifetimes.child_s}s",
             "rekey_time": f"{lifetimes.child_rekey_s}s",
             "dpd_action": "restart", "close_action": "none", "start_action": "trap"}
    return {"version": str(ike_version), "local_addrs": [CUSTOMER_PUBLIC_IP], "remote_addrs": [tunnel_ip],
            "proposals": [PROPOSAL], "reauth_time": f"{lifetimes.ike_s}s", "dpd_delay": "10s", "dpd_timeout": "30s",
            "keyingtries": "0", "unique": "no",
            "local": {"auth": "psk", "id": CUSTOMER_PUBLIC_IP}, "remote": {"auth": "psk", "id": tunnel_ip},
            "children": {seed_name(number): child}}


class SeedSystem:
    """Plain strongSwan configured like the article, both tunnels brought up once (`ipsec up`)."""

    name = "strongswan"
    follows_api = False  # the article's config is written once by hand

    def __init__(self, lab: Lab, workdir: Path, stack: ExitStack, mode: str, probe: str = "icmp",
                 lifetimes: Lifetimes = ARTICLE_LIFETIMES) -> None:
        self.lab, self.mode = lab, mode  # the article's config has no probe: `probe` changes nothing
        self.lifetimes = lifetimes
        self.drained: int | None = None

    def start(self, timeout: float) -> None:
        with self.lab.customer_charon.connected() as session:
            for number in (1, 2):
                # The PSK goes inline: no local variable ever holds it.
                session.load_shared({"id": seed_name(number), "type": "IKE", "data": self.lab.psks[number - 1],
                                     "owners": [CUSTOMER_PUBLIC_IP, TUNNEL_IPS[number - 1]]})
                session.load_conn({seed_name(number): seed_conn(number, self.lab.ike_version, self.lifetimes)})
        if self.lab.kernel_ipsec:
            # Backstop as in kernel_scenarios: a route to the space whatever charon installs.
            subprocess.run(["ip", "-n", self.lab.topology.cust_ns, "route", "replace", SPACE_CIDR,
                            "via", "203.0.113.1", "src", CUSTOMER_HOST_IP], check=True, capture_output=True)
        for number in (1, 2):
            self._initiate(number)
        _wait(self.redundant, timeout, "plain strongSwan did not bring both tunnels up")

    def _initiate(self, number: int) -> None:
        with self.lab.customer_charon.connected() as session:
            list(session.initiate({"child": seed_name(number), "ike": seed_name(number),
                                   "timeout": INITIATE_TIMEOUT_MS}))

    def _sas(self) -> dict[int, list[dict]]:
        with self.lab.customer_charon.connected(timeout_s=5.0) as session:
            entries = list(session.list_sas())
        found: dict[int, list[dict]] = {1: [], 2: []}
        numbers = {seed_name(n): n for n in found}
        for entry in entries:
            for name, ike in entry.items():
                if name in numbers:
                    found[numbers[name]].append(ike)
        return found

    def redundant(self) -> bool:
        sas = self._sas()
        established = all(any(ike.get("state") == b"ESTABLISHED" for ike in ikes) for ikes in sas.values())
        children = [c for ikes in sas.values() for ike in ikes for c in (ike.get("child-sas") or {}).values()]
        return established and any(c.get("state") == b"INSTALLED" for c in children)

    def _packets_out(self) -> dict[int, int]:
        return {n: sum(int(c.get("packets-out", b"0")) for ike in ikes
                       for c in (ike.get("child-sas") or {}).values()) for n, ikes in self._sas().items()}

    def active_tunnel(self) -> int:
        """The tunnel whose child carries traffic: the one whose counters grow under a
        short ping (the newest child on both data paths); in doubt tunnel 1."""
        before = self._packets_out()
        ping(self.lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=5, interval=0.02)
        after = self._packets_out()
        grew = {n: after[n] - before.get(n, 0) for n in after}
        best = max(grew, key=grew.get)
        return best if grew[best] > 0 else 1

    def announce(self, number: int, down: bool) -> str:
        return f"API tunnel {number} {'DOWN' if down else 'UP'} (no effect on plain strongSwan)"

    def drain(self, number: int, undo: bool = False) -> str:
        """The operator's nearest equivalent: move the child by hand, put it back later."""
        if undo:
            self._initiate(number)
            return f"swanctl --initiate --child {seed_name(number)}"
        other = 3 - number
        steps = []
        if not any(c.get("state") == b"INSTALLED" for ike in self._sas()[other]
                   for c in (ike.get("child-sas") or {}).values()):
            self._initiate(other)
            steps.append(f"swanctl --initiate --child {seed_name(other)}")
        with self.lab.customer_charon.connected() as session:
            list(session.terminate({"child": seed_name(number), "timeout": 5000}))
        steps.append(f"swanctl --terminate --child {seed_name(number)}")
        return "; ".join(steps)

    def update_cidrs(self, cidrs: list[str]) -> str:
        return f"API routable_cidrs {','.join(cidrs)} (plain strongSwan does not read the API)"

    def reorder(self) -> str:
        return "API lists the tunnels the other way round (plain strongSwan does not read the API)"

    def recreate(self, stage: str, psks: list[str] | None = None, tunnel_ips: list[str] | None = None) -> str:
        return f"API {stage} (plain strongSwan does not read the API; its config has the old PSKs)"

    def after_window(self, spec_key: str) -> dict[str, Any]:
        """After a CIDR update plain strongSwan keeps its old selectors: does the space
        side still accept them? One new Quick Mode on the standby tunnel, as at the next
        rekey, after the traffic window so that it changes no figure."""
        if spec_key != "e":
            return {}
        number = 3 - self.active_tunnel()
        try:
            self._initiate(number)
        except vici.exception.CommandException as e:
            return {"old_selectors_quick_mode": f"tunnel {number}: refused ({e})"}
        children = [c for ike in self._sas()[number] for c in (ike.get("child-sas") or {}).values()
                    if c.get("state") == b"INSTALLED"]
        newest = max(children, key=lambda c: int(c["uniqueid"]), default=None)
        if newest is None:
            return {"old_selectors_quick_mode": f"tunnel {number}: no CHILD_SA installed"}
        local = ",".join(t.decode() for t in newest.get("local-ts", []))
        remote = ",".join(t.decode() for t in newest.get("remote-ts", []))
        return {"old_selectors_quick_mode": f"tunnel {number}: accepted ({local} === {remote})"}

    def details(self) -> dict[str, Any]:
        return {"baseline_data_path": BASELINE_DATA_PATH[self.mode]}


SYSTEM_CLASSES: dict[str, type] = {"agent": AgentSystem, "strongswan": SeedSystem}


def _wait(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not safe_poll(predicate):
        if time.monotonic() >= deadline:
            raise BenchError(f"{message} within {timeout:g} s")
        time.sleep(POLL_S)


def safe_poll(predicate: Callable[[], bool]) -> bool:
    # A charon busy re-keying may answer slowly or not at all: that poll is just "not yet".
    try:
        return bool(predicate())
    except (OSError, vici.exception.SessionException, vici.exception.CommandException, KeyError) as e:
        log.debug("redundancy poll failed: %s", e)
        return False
