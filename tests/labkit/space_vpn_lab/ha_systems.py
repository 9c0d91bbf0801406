"""What runs on each HA gateway on top of its charon: plain strongSwan configured like
the article on both nodes (the common keepalived + strongSwan recipe: every node always
tries, with start_action = start and keyingtries forever, from an address only the
master holds), or the agent with `ha: {enabled: true}`, told by keepalived's notify.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from space_vpn_lab.agent_process import AgentProcess, heroku_agent_config, is_redundant, write_secret_file
from space_vpn_lab.bench_systems import seed_conn, seed_name
from space_vpn_lab.fake_api import SPACE, VPN, FakePlatformApi, start_fake_api
from space_vpn_lab.ha_topology import WAN_VIP
from space_vpn_lab.space_side import TunnelSas, summarize_ike_sas
from space_vpn_lab.topology import SPACE_HOST_IP

if TYPE_CHECKING:
    from space_vpn_lab.ha_lab import Gateway, HaLab

log = logging.getLogger(__name__)

#: The agent's /metrics inside each gateway namespace (its own loopback).
AGENT_METRICS_PORT = 19813
#: As the failover bench's default: ICMP to the space host through the tunnel, from the
#: gateway's first address in the routable CIDR (its LAN address).
AGENT_PROBE: dict[str, Any] = {"target": SPACE_HOST_IP, "interval": "100ms", "failures": 3}


def gateway_sas(gateway: Gateway) -> list[dict]:
    """list-sas of a gateway's charon (values as bytes)."""
    with gateway.charon.connected(timeout_s=5.0) as session:
        return [ike for entry in session.list_sas() for ike in entry.values()]


def gateway_conns(gateway: Gateway) -> list[str]:
    with gateway.charon.connected(timeout_s=5.0) as session:
        return [name for entry in session.list_conns() for name in entry]


class PlainStrongswanPair:
    """The article's conns vpn1/vpn2 on both nodes, child start_action `start`,
    keyingtries 0 (retry for ever). Nothing tells charon about VRRP: the backup's charon
    keeps retransmitting from the WAN VIP it does not hold ("Network is unreachable")
    and gets through at its next retransmission after the VIP arrives (charon's
    defaults: 4, 7.2, 13, 23.3, 42 s apart, then 75.6 s until it gives up and starts
    over). `trap` instead of `start` is no option here: kernel-libipsec raises no
    acquire for forwarded LAN traffic (checked: the LAN never got through)."""

    name = "strongswan"
    START_ACTION = "start"

    def __init__(self, lab: HaLab) -> None:
        self.lab = lab

    def start(self, gateway: Gateway) -> None:
        with gateway.charon.connected() as session:
            for number in (1, 2):
                # The PSK goes inline: no local variable ever holds it.
                session.load_shared({"id": seed_name(number), "type": "IKE", "data": self.lab.psks[number - 1],
                                     "owners": [WAN_VIP, self.lab.tunnel_ips[number - 1]]})
                conn = seed_conn(number, self.lab.ike_version)
                conn["children"][seed_name(number)]["start_action"] = self.START_ACTION
                session.load_conn({seed_name(number): conn})

    def kill(self, gateway: Gateway) -> None:
        """Nothing of its own runs: charon goes with the node."""

    def notify_argv(self, gateway: Gateway) -> list[str] | None:
        return None

    def track_argv(self, gateway: Gateway) -> list[str] | None:
        return None

    def yield_file(self, gateway: Gateway) -> str | None:
        return None

    def close(self) -> None:
        pass

    def ready(self) -> bool:
        """One master, and its charon has both tunnels up."""
        masters = self.lab.masters()
        return len(masters) == 1 and all(t.up for t in self.tunnels(self.lab.gateways[masters[0]]).values())

    def tunnels(self, gateway: Gateway) -> dict[int, TunnelSas]:
        by_name: dict[int, list[dict]] = {1: [], 2: []}
        with gateway.charon.connected(timeout_s=5.0) as session:
            for entry in session.list_sas():
                for name, ike in entry.items():
                    for number in by_name:
                        if name == seed_name(number):
                            by_name[number].append(ike)
        return {n: summarize_ike_sas(ikes) for n, ikes in by_name.items()}

    def details(self) -> dict[str, Any]:
        return {"start_action": self.START_ACTION, "keyingtries": 0}


class AgentPair:
    """One agent per gateway with `ha: {enabled: true}`, each with its own fake Platform
    API (on the gateway's loopback), control socket, state dir, metrics port and VICI
    socket; keepalived's notify calls `agentctl --socket S ha STATE`."""

    name = "agent"

    def __init__(self, lab: HaLab, token: str, mode: str = "policy", probe: dict[str, Any] | None = AGENT_PROBE,
                 extra: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self.token = token
        self.mode = mode
        self.probe = probe
        self.extra = extra or {}
        self.apis: dict[str, FakePlatformApi] = {}
        self.agents: dict[str, AgentProcess] = {}

    def workdir(self, gateway: Gateway) -> Path:
        return gateway.workdir / f"{gateway.name}-agent"

    def control_socket(self, gateway: Gateway) -> str:
        return str(self.workdir(gateway) / "control.sock")

    def agent(self, gateway: Gateway) -> AgentProcess:
        if gateway.name not in self.agents:
            workdir = self.workdir(gateway)
            workdir.mkdir(parents=True, exist_ok=True)
            self.apis[gateway.name] = start_fake_api(self.lab, self.token, netns=gateway.netns)
            write_secret_file(workdir / "heroku-token", self.token)
            config = heroku_agent_config(
                workdir, api_url=self.apis[gateway.name].url, vici_socket=gateway.charon.vici_socket,
                space=SPACE, vpn=VPN, local_address=WAN_VIP, mode=self.mode,
                extra={"ha": {"enabled": True, "yield_file": self.yield_file(gateway)}, "metrics": {"listen": f"127.0.0.1:{AGENT_METRICS_PORT}"},
                       **self.extra})
            if self.probe is not None:
                config["connections"][0]["probe"] = dict(self.probe)
            self.agents[gateway.name] = AgentProcess(workdir, gateway.netns, config)
        return self.agents[gateway.name]

    def start(self, gateway: Gateway) -> None:
        self.agent(gateway).start()

    def kill(self, gateway: Gateway) -> None:
        if gateway.name in self.agents:
            self.agents[gateway.name].kill()

    def notify_argv(self, gateway: Gateway) -> list[str] | None:
        return [sys.executable, "-m", "agent.cli.agentctl", "--socket", self.control_socket(gateway)]

    def track_argv(self, gateway: Gateway) -> list[str] | None:
        """As config/keepalived.example.conf's chk_agent: fails only when the agent does not
        answer on its control socket (agentctl exit 3)."""
        agentctl = shlex.join([*self.notify_argv(gateway), "status"])
        env = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} " if os.environ.get("PYTHONPATH") else ""
        return ["/bin/sh", "-c", f"{env}{agentctl} >/dev/null 2>&1; test $? -ne 3"]

    def yield_file(self, gateway: Gateway) -> str | None:
        """The agent's split-brain yield (ha.yield_file), keepalived's track_file; its
        folder exists before keepalived starts (keepalived drops a track file without one)."""
        self.workdir(gateway).mkdir(parents=True, exist_ok=True)
        return str(self.workdir(gateway) / "ha-yield")

    def close(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        for api in self.apis.values():
            api.stop()

    def ha_state(self, gateway: Gateway) -> str | None:
        """`ha.state` of the gateway's agent status (None: unreachable or no `ha`)."""
        status = self.agent(gateway).status()
        return ((status or {}).get("ha") or {}).get("state")

    def ready(self) -> bool:
        """One master whose agent says master with a tunnel carrying traffic and the
        other's IKE SA up; the other node's agent says backup."""
        for name, agent in self.agents.items():
            if self.lab.gateways[name].powered and not agent.running():
                raise RuntimeError(f"the agent on {name} exited; see {agent.log_path}: "
                                   f"{agent.log_text().strip().splitlines()[-1:]}")
        masters = self.lab.masters()
        if len(masters) != 1:
            return False
        master, backup = (self.lab.gateways[n] for n in (masters[0], self.lab.other(masters[0])))
        status = self.agent(master).status()
        return (status is not None and (status.get("ha") or {}).get("state") == "master"
                and (is_redundant(status, 1) or is_redundant(status, 2)) and self.ha_state(backup) == "backup")

    def log_texts(self) -> dict[str, str]:
        return {f"{name}-agent.log": agent.log_text() for name, agent in self.agents.items()}

    def details(self) -> dict[str, Any]:
        statuses = {name: agent.status() for name, agent in self.agents.items()}
        return {"mode": self.mode, "ha": {name: (s or {}).get("ha") for name, s in statuses.items()}}
