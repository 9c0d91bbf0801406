"""The HA lab as one context manager: the space side (one charon answering both tunnel
endpoints, `unique = replace`: a new IKE SA of the customer's identity replaces the old
node's), two gateways each with its own charon and keepalived, a LAN host behind the LAN
VIP, and what runs on each gateway on top of charon (the node software: the plain
strongSwan pair or the agent, ha_systems).

Failures: `power_off` (links down, every process of the node killed, its VIPs gone),
`set_lan_link`, `split_brain` (VRRP dropped on both nodes). `close()` removes
everything, also after a failed start; an atexit hook is the last safety net.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from space_vpn_lab.charon_instance import DEFAULT_BINARY, CharonInstance
from space_vpn_lab.ha_topology import (GATEWAYS, LAN_IFACE, LAN_PREFIXLEN, LAN_HOST_IP, LAN_VIP, WAN_IFACE, WAN_VIP,
                                       GatewayAddresses, HaTopology)
from space_vpn_lab.keepalived import Keepalived, VrrpNode, VrrpSettings
from space_vpn_lab.lab import generate_psk, run_every_step
from space_vpn_lab.space_side import SpaceSide, SpaceTunnel
from space_vpn_lab.topology import PUBLIC_PREFIXLEN, ROUTABLE_CIDR, SPACE_HOST_IP, TUNNEL_IPS
from space_vpn_lab.traffic import PingResult, ping

log = logging.getLogger(__name__)

#: gw1 wins the first election; with nopreempt that is all priorities decide.
PRIORITIES = {"gw1": 150, "gw2": 100}
ELECTION_TIMEOUT_S = 10.0
POLL_S = 0.05


class NodeSoftware(Protocol):
    """What runs on a gateway on top of its charon (ha_systems)."""

    name: str

    def start(self, gateway: "Gateway") -> None: ...
    def kill(self, gateway: "Gateway") -> None: ...
    def notify_argv(self, gateway: "Gateway") -> list[str] | None: ...
    def track_argv(self, gateway: "Gateway") -> list[str] | None: ...
    def yield_file(self, gateway: "Gateway") -> str | None: ...
    def ready(self) -> bool: ...
    def details(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


class Gateway:
    """One customer gateway: its namespace, charon and keepalived."""

    def __init__(self, addresses: GatewayAddresses, peer: GatewayAddresses, topology: HaTopology,
                 workdir: Path, vrrp: VrrpSettings, charon_binary: str) -> None:
        self.name = addresses.name
        self.addresses = addresses
        self.netns = topology.gateway_ns(self.name)
        self.workdir = workdir
        self.charon = CharonInstance(self.name, self.netns, workdir, binary=charon_binary)
        self.keepalived = Keepalived(self.name, self.netns, workdir, vrrp)
        self.vrrp_node = VrrpNode(
            name=self.name, priority=PRIORITIES[self.name], wan_iface=WAN_IFACE, lan_iface=LAN_IFACE,
            wan_ip=addresses.wan_ip, lan_ip=addresses.lan_ip, peer_wan_ip=peer.wan_ip, peer_lan_ip=peer.lan_ip,
            wan_vip=WAN_VIP, lan_vip=LAN_VIP, wan_prefixlen=PUBLIC_PREFIXLEN, lan_prefixlen=LAN_PREFIXLEN)
        self.powered = False

    def __repr__(self) -> str:
        return f"Gateway({self.name!r}, powered={self.powered})"


class HaLab:
    """Use as `with HaLab(tmp_path, software_factory) as lab:`; `software_factory(lab)`
    builds the node software once the lab's attributes exist."""

    def __init__(self, workdir: str | os.PathLike, software_factory: Callable[["HaLab"], NodeSoftware], *,
                 prefix: str = "svha", ike_version: int = 1, psks: Sequence[str] | None = None,
                 vrrp: VrrpSettings | None = None, charon_binary: str = DEFAULT_BINARY) -> None:
        self.workdir = Path(workdir)
        self.ike_version = ike_version
        self.psks: tuple[str, ...] = tuple(psks) if psks is not None else (generate_psk(), generate_psk())
        self.tunnel_ips = TUNNEL_IPS
        self.routable_cidrs = (ROUTABLE_CIDR,)
        self.vrrp = vrrp or VrrpSettings()
        self.topology = HaTopology(prefix)
        self.space_charon = CharonInstance("space", self.topology.space_ns, self.workdir, binary=charon_binary)
        self.space = SpaceSide(self.space_charon, [SpaceTunnel(a, p) for a, p in zip(self.tunnel_ips, self.psks)],
                               ike_version=ike_version, customer_id=WAN_VIP, customer_ip=WAN_VIP,
                               remote_ts=self.routable_cidrs, unique="replace")
        self.gateways = {a.name: Gateway(a, b, self.topology, self.workdir, self.vrrp, charon_binary)
                         for a, b in zip(GATEWAYS, reversed(GATEWAYS))}
        self.software = software_factory(self)
        self._open = False

    def __repr__(self) -> str:
        # psks deliberately left out: a repr can end up in a test failure report.
        return f"HaLab(prefix={self.topology.prefix!r}, software={self.software.name!r})"

    @property
    def every_psk(self) -> tuple[str, ...]:
        return self.psks

    # --- life cycle ---------------------------------------------------------------------

    def open(self) -> "HaLab":
        """Namespaces, space side, both charons; then gw1 (so it is the first master),
        then gw2, each booting as power_on does: the node software, then keepalived (whose
        track script may ask the software)."""
        atexit.register(self.close)
        self._open = True
        began = time.monotonic()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.topology.create()
            self.space_charon.start()
            self.space.load()
            for gw in self.gateways.values():
                gw.charon.start()
            for gw in self.gateways.values():
                self.software.start(gw)
                self._start_keepalived(gw)
                self.wait_for(lambda: self.vrrp_state(gw.name) is not None, ELECTION_TIMEOUT_S,
                              f"{gw.name}'s keepalived reporting a state")
                if gw.name == "gw1":
                    self.wait_for(lambda: self.masters() == ["gw1"], ELECTION_TIMEOUT_S, "gw1 elected")
                gw.powered = True
        except BaseException:
            log.error("HA lab %s failed to start; cleaning up", self.topology.prefix)
            self.close()
            raise
        log.info("HA lab %s up in %.2f s (%s)", self.topology.prefix, time.monotonic() - began, self.software.name)
        return self

    def _start_keepalived(self, gw: Gateway) -> None:
        env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else None
        gw.keepalived.write(gw.vrrp_node, agentctl=self.software.notify_argv(gw),
                            track=self.software.track_argv(gw), env=env, track_file=self.software.yield_file(gw))
        gw.keepalived.start()

    def close(self) -> None:
        """Idempotent; each step runs even when an earlier one fails."""
        if not self._open:
            return
        self._open = False
        atexit.unregister(self.close)
        steps: list[Callable[[], None]] = [self.software.close]
        for gw in self.gateways.values():
            steps += [gw.keepalived.kill, gw.charon.stop]
        steps += [self.space_charon.stop, self.space.destroy, self.topology.destroy]
        run_every_step(steps, f"HA lab {self.topology.prefix}")
        log.info("HA lab %s closed", self.topology.prefix)

    def __enter__(self) -> "HaLab":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- failures -------------------------------------------------------------------------

    def power_off(self, name: str) -> float:
        """Pull both cables, then kill everything on the node (keepalived, the node
        software, charon) without a chance to say goodbye; the VIPs it held are gone
        as after a reboot. Returns the unix time the links went down."""
        gw = self.gateways[name]
        self.topology.set_links(name, up=False)
        at = time.time()
        gw.keepalived.kill()
        self.software.kill(gw)
        gw.charon.kill()
        self.topology.remove_vips(name)
        gw.powered = False
        log.info("gateway %s powered off", name)
        return at

    def power_on(self, name: str) -> None:
        """Boot order of a gateway: links, charon, the node software, keepalived."""
        gw = self.gateways[name]
        if gw.powered:
            raise RuntimeError(f"gateway {name} is already on")
        self.topology.set_links(name, up=True)
        gw.charon.start()
        self.software.start(gw)
        self._start_keepalived(gw)
        gw.powered = True
        log.info("gateway %s powered on", name)

    def set_lan_link(self, name: str, up: bool) -> None:
        self.topology.set_link(name, LAN_IFACE, up)

    def split_brain(self, on: bool = True) -> None:
        """VRRP dropped (on) or passed again (off) on both gateways; WAN and LAN stay up."""
        for name in self.gateways:
            self.topology.block_vrrp(name, on)

    def restore(self, timeout: float = ELECTION_TIMEOUT_S) -> str:
        """Back to a healthy pair after whatever a test did: VRRP passes, links up, both
        nodes on; returns the one master once there is exactly one."""
        self.split_brain(False)
        for name, gw in self.gateways.items():
            if gw.powered:
                self.topology.set_links(name, up=True)
            else:
                self.power_on(name)
        self.wait_for(lambda: len(self.masters()) == 1 and all(
            self.vrrp_state(n) in ("MASTER", "BACKUP") for n in self.gateways), timeout, "one master")
        return self.masters()[0]

    # --- observation ----------------------------------------------------------------------

    def vips(self, name: str) -> frozenset[str]:
        return self.topology.vips(name)

    def masters(self) -> list[str]:
        """Gateways holding both VIPs."""
        return [name for name in self.gateways if self.vips(name) == {WAN_VIP, LAN_VIP}]

    def vrrp_state(self, name: str) -> str | None:
        return self.gateways[name].keepalived.state()

    def other(self, name: str) -> str:
        return next(n for n in self.gateways if n != name)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll until predicate() holds; returns the seconds it took, raises TimeoutError."""
        began = time.monotonic()
        while not predicate():
            if time.monotonic() - began > timeout:
                raise TimeoutError(f"no {what} within {timeout:g} s (VIPs: "
                                   f"{ {n: sorted(self.vips(n)) for n in self.gateways} })")
            time.sleep(POLL_S)
        return time.monotonic() - began

    def lan_ping(self, count: int = 5, interval: float = 0.2, deadline: float | None = None) -> PingResult:
        """From the LAN host through the LAN VIP to the space host: crosses the tunnel."""
        return ping(self.topology.lan_ns, LAN_HOST_IP, SPACE_HOST_IP, count=count, interval=interval,
                    deadline=deadline)

    def log_texts(self) -> dict[str, str]:
        """Every charon and keepalived log the lab wrote (for secret checks and post-mortems)."""
        return {path.name: path.read_text(errors="replace") for path in sorted(self.workdir.glob("*.log"))}
