"""The HA lab's namespaces: two customer gateways `<prefix>-gw1`/`-gw2`, a LAN host
`<prefix>-lan`, the space side `<prefix>-space` as in the one-gateway lab, and
`<prefix>-sw`, a switch holding two bridges (WAN: both gateways and the space side;
LAN: both gateways and the LAN host). Only documentation and RFC 1918 addresses.

The VRRP addresses (WAN VIP = the customer public IP the space expects, LAN VIP = the
LAN's gateway to the space) belong to keepalived; this module only builds the wires and
offers the failures: a node's links down, one LAN link down, VRRP blocked (split brain).
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass

from space_vpn_lab.topology import (CUSTOMER_HOST_IP, CUSTOMER_PUBLIC_IP, PUBLIC_PREFIXLEN, SPACE_CIDR,
                                    SPACE_PUBLIC_IP, TUNNEL_CIDR, Topology, address_space_side, ip)

log = logging.getLogger(__name__)

WAN_VIP = CUSTOMER_PUBLIC_IP  # 203.0.113.10: what Heroku knows as the customer's public IP
LAN_VIP = "172.16.0.1"
LAN_PREFIXLEN = 24
LAN_HOST_IP = CUSTOMER_HOST_IP  # 172.16.0.2
#: Interface names inside each gateway.
WAN_IFACE, LAN_IFACE = "wan0", "lan0"
#: nftables table (family inet) in a gateway namespace that drops VRRP (split brain).
NFT_VRRP_TABLE = "svpn_ha"
VRRP_PROTOCOL = 112


@dataclass(frozen=True)
class GatewayAddresses:
    """One gateway's own addresses (the VIPs come and go with VRRP)."""

    name: str
    wan_ip: str
    lan_ip: str


GATEWAYS = (GatewayAddresses("gw1", "203.0.113.11", "172.16.0.252"),
            GatewayAddresses("gw2", "203.0.113.12", "172.16.0.253"))


class HaTopology(Topology):
    """Creates and removes the five namespaces; `destroy()` is idempotent (inherited:
    leftover processes killed by pid, then the namespaces deleted)."""

    _SPACE_VETH = "vs"
    _LAN_HOST_IFACE = "eth0"
    _WAN_BRIDGE, _LAN_BRIDGE = "brwan", "brlan"

    def gateway_ns(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    @property
    def lan_ns(self) -> str:
        return f"{self.prefix}-lan"

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def cust_ns(self) -> str:
        raise AttributeError("the HA lab has two gateways: use gateway_ns(name)")

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (*(self.gateway_ns(g.name) for g in GATEWAYS), self.lan_ns, self.space_ns, self.switch_ns)

    def write_hosts(self, entries: dict[str, str]) -> None:
        raise NotImplementedError("the HA lab resolves no names")

    def _build(self) -> None:
        for ns in self.namespaces:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        sw = self.switch_ns
        for bridge in (self._WAN_BRIDGE, self._LAN_BRIDGE):
            ip("-n", sw, "link", "add", bridge, "type", "bridge")
            ip("-n", sw, "link", "set", bridge, "up")
        for gw in GATEWAYS:
            self._build_gateway(gw)
        self._plug(self.space_ns, self._SPACE_VETH, "space", self._WAN_BRIDGE)
        address_space_side(self.space_ns, self._SPACE_VETH)
        self._plug(self.lan_ns, self._LAN_HOST_IFACE, "lanhost", self._LAN_BRIDGE)
        lan = self.lan_ns
        ip("-n", lan, "addr", "add", f"{LAN_HOST_IP}/{LAN_PREFIXLEN}", "dev", self._LAN_HOST_IFACE)
        ip("-n", lan, "link", "set", self._LAN_HOST_IFACE, "up")
        # Only the space goes to the LAN VIP: nothing else ever leaves the LAN host.
        ip("-n", lan, "route", "add", SPACE_CIDR, "via", LAN_VIP)

    def _build_gateway(self, gw: GatewayAddresses) -> None:
        ns = self.gateway_ns(gw.name)
        self._plug(ns, WAN_IFACE, f"{gw.name}-wan", self._WAN_BRIDGE)
        self._plug(ns, LAN_IFACE, f"{gw.name}-lan", self._LAN_BRIDGE)
        ip("-n", ns, "addr", "add", f"{gw.wan_ip}/{PUBLIC_PREFIXLEN}", "dev", WAN_IFACE)
        ip("-n", ns, "addr", "add", f"{gw.lan_ip}/{LAN_PREFIXLEN}", "dev", LAN_IFACE)
        for iface in (WAN_IFACE, LAN_IFACE):
            ip("-n", ns, "link", "set", iface, "up")
        self._add_wan_route(gw.name)
        _sysctl(ns, "net.ipv4.ip_forward=1")

    def _plug(self, ns: str, iface: str, port: str, bridge: str) -> None:
        """A veth from `ns` (named iface) to a port of `bridge` in the switch namespace.
        Created inside `ns`, so no interface ever appears in the root namespace."""
        ip("-n", ns, "link", "add", iface, "type", "veth", "peer", "name", port, "netns", self.switch_ns)
        ip("-n", self.switch_ns, "link", "set", port, "master", bridge)
        ip("-n", self.switch_ns, "link", "set", port, "up")

    def _add_wan_route(self, gateway: str) -> None:
        """The route to the far end's tunnel addresses. The kernel drops it when the WAN
        link goes down, so it is put back each time the link comes up (as a booting
        node's network configuration would)."""
        ip("-n", self.gateway_ns(gateway), "route", "replace", TUNNEL_CIDR, "via", SPACE_PUBLIC_IP)

    # --- failures -----------------------------------------------------------------------

    def set_link(self, gateway: str, iface: str, up: bool) -> None:
        """One gateway interface (WAN_IFACE or LAN_IFACE) down or up; its bridge port
        loses carrier, as when a cable is pulled."""
        if iface not in (WAN_IFACE, LAN_IFACE):
            raise ValueError(f"a gateway has {WAN_IFACE} and {LAN_IFACE}, not {iface}")
        ip("-n", self.gateway_ns(gateway), "link", "set", iface, "up" if up else "down")
        if up and iface == WAN_IFACE:
            self._add_wan_route(gateway)

    def set_links(self, gateway: str, up: bool) -> None:
        """Both links of a gateway at once (one `ip -batch`: the node vanishes from both
        networks in the same instant)."""
        state = "up" if up else "down"
        batch = "".join(f"link set {iface} {state}\n" for iface in (WAN_IFACE, LAN_IFACE))
        subprocess.run(["ip", "-n", self.gateway_ns(gateway), "-batch", "-"], input=batch, text=True,
                       check=True, capture_output=True)
        if up:
            self._add_wan_route(gateway)

    def remove_vips(self, gateway: str) -> None:
        """What a power-off loses: the VIPs keepalived had added (a killed keepalived
        leaves them configured)."""
        for address, iface in ((f"{WAN_VIP}/{PUBLIC_PREFIXLEN}", WAN_IFACE), (f"{LAN_VIP}/{LAN_PREFIXLEN}", LAN_IFACE)):
            ip("-n", self.gateway_ns(gateway), "addr", "del", address, "dev", iface, check=False)

    def vips(self, gateway: str) -> frozenset[str]:
        """Which of the two VIPs this gateway holds right now."""
        out = ip("-n", self.gateway_ns(gateway), "-j", "addr", "show").stdout
        held = {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}
        return frozenset(held & {WAN_VIP, LAN_VIP})

    def block_vrrp(self, gateway: str, blocked: bool = True) -> None:
        """Drop VRRP in and out of a gateway (both links) while everything else passes:
        with both gateways blocked, each believes the other dead (split brain)."""
        ns = self.gateway_ns(gateway)
        _nft(ns, "delete", "table", "inet", NFT_VRRP_TABLE, check=False)
        if blocked:
            _nft(ns, "-f", "-", stdin=f"""
table inet {NFT_VRRP_TABLE} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    ip protocol {VRRP_PROTOCOL} drop
  }}
  chain output {{
    type filter hook output priority -10; policy accept;
    ip protocol {VRRP_PROTOCOL} drop
  }}
}}
""")
        log.info("VRRP %s on %s", "blocked" if blocked else "unblocked", gateway)

    def vrrp_blocked(self, gateway: str) -> bool:
        return _nft(self.gateway_ns(gateway), "list", "table", "inet", NFT_VRRP_TABLE, check=False).returncode == 0


def _sysctl(ns: str, setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], check=True, capture_output=True)


def _nft(ns: str, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} in {ns} failed: {result.stderr.strip()}")
    return result
