"""The lab's two network namespaces: `<prefix>-cust` (customer VPN host) and
`<prefix>-space` (the Heroku/AWS side with both tunnel endpoints), joined by a veth
pair and addressed only with documentation and RFC 1918 ranges (shared/lab-recipe.md).
A namespace can get its own hosts file (/etc/netns/NS/hosts, which `ip netns exec`
mounts over /etc/hosts), so lab names resolve only inside the lab.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

CUSTOMER_PUBLIC_IP = "203.0.113.10"
SPACE_PUBLIC_IP = "203.0.113.1"
PUBLIC_PREFIXLEN = 24
TUNNEL_IPS = ("198.51.100.1", "198.51.100.2")
TUNNEL_CIDR = "198.51.100.0/24"
CUSTOMER_HOST_IP = "172.16.0.2"
SPACE_HOST_IP = "10.0.0.10"  # answers ping: the instrument that measures traffic
#: The internal-routing app: TCP on APP_PORT, no ICMP (space_vpn_lab.app_host); two
#: addresses, so its name can move from one to the other.
APP_HOST_IPS = ("10.0.0.20", "10.0.0.21")
APP_PORT = 443
APP_NAME = "app.acme.internal"
#: Where `ip netns exec NS` finds files it mounts over /etc (iproute2's NETNS_ETC_DIR).
NETNS_ETC = "/etc/netns"
ROUTABLE_CIDR = "172.16.0.0/16"
SPACE_CIDR = "10.0.0.0/16"
#: A second routable CIDR (`heroku spaces:vpn:connect --cidrs A,B`) and a customer host
#: inside it: traffic from there must cross the tunnel too.
SECOND_ROUTABLE_CIDR = "192.168.50.0/24"
SECOND_CUSTOMER_HOST_IP = "192.168.50.2"
#: A second VPN connection from the same gateway into another space (Lab.add_vpn): its
#: own endpoints in TUNNEL_CIDR, space CIDR and host there that answers ping.
OTHER_VPN_TUNNEL_IPS = ("198.51.100.11", "198.51.100.12")
OTHER_SPACE_CIDR = "10.2.0.0/16"
OTHER_SPACE_HOST_IP = "10.2.0.10"
#: Many VPN connections from one gateway (Lab.add_vpns, the scale benchmark): the n-th
#: further VPN (from 0) gets two endpoints of its own from 198.51.100.21 up, a space
#: CIDR 10.(10+n).0.0/16 with a host at .0.10, and a routable CIDR 172.20.n.0/24 with
#: a customer host at .2: no selector, policy or route of one touches another's.
SCALE_FIRST_TUNNEL_HOST = 21
SCALE_MAX_VPNS = 100


@dataclass(frozen=True)
class VpnAddresses:
    """Where one further VPN of the lab lives (scale_vpn_addresses)."""

    tunnel_ips: tuple[str, str]
    space_cidr: str
    space_host_ip: str
    routable_cidr: str
    customer_host_ip: str


def scale_vpn_addresses(n: int) -> VpnAddresses:
    """The addresses of the n-th further VPN (0 <= n < SCALE_MAX_VPNS), clear of the
    lab's first VPN (198.51.100.1-2, 10.0.0.0/16, 172.16.0.0/16) and of OTHER_* (add_vpn)."""
    if not 0 <= n < SCALE_MAX_VPNS:
        raise ValueError(f"the lab has room for {SCALE_MAX_VPNS} further VPNs, not {n + 1}")
    first = SCALE_FIRST_TUNNEL_HOST + 2 * n
    return VpnAddresses(tunnel_ips=(f"198.51.100.{first}", f"198.51.100.{first + 1}"),
                        space_cidr=f"10.{10 + n}.0.0/16", space_host_ip=f"10.{10 + n}.0.10",
                        routable_cidr=f"172.20.{n}.0/24", customer_host_ip=f"172.20.{n}.2")

#: Seconds a process gets between SIGTERM and SIGKILL when a namespace is torn down.
KILL_GRACE_S = 3.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one `ip` command (argv list, never a shell string)."""
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def netns_exists(name: str) -> bool:
    return name in list_netns()


def list_netns() -> list[str]:
    out = ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(name: str) -> list[int]:
    result = ip("netns", "pids", name, check=False)
    return [int(tok) for tok in result.stdout.split() if tok.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds nothing, so count it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pids(pids: list[int], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM every pid, wait up to grace_s, then SIGKILL the survivors."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            log.warning("pid %s ignored SIGTERM, sending SIGKILL", pid)
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def address_space_side(space_ns: str, veth: str) -> None:
    """The space namespace's addresses: its public address on `veth` (then up), both
    tunnel endpoints, the space host and the app's addresses on lo."""
    ip("-n", space_ns, "addr", "add", f"{SPACE_PUBLIC_IP}/{PUBLIC_PREFIXLEN}", "dev", veth)
    for address in (*TUNNEL_IPS, SPACE_HOST_IP, *APP_HOST_IPS):
        ip("-n", space_ns, "addr", "add", f"{address}/32", "dev", "lo")
    ip("-n", space_ns, "link", "set", veth, "up")


class Topology:
    """Creates and removes the two namespaces. `destroy()` is idempotent."""

    def __init__(self, prefix: str = "svpn") -> None:
        self.prefix = prefix

    @property
    def cust_ns(self) -> str:
        return f"{self.prefix}-cust"

    @property
    def space_ns(self) -> str:
        return f"{self.prefix}-space"

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.cust_ns, self.space_ns)

    @property
    def customer_public_ip(self) -> str:
        return CUSTOMER_PUBLIC_IP

    @property
    def tunnel_ips(self) -> tuple[str, str]:
        return TUNNEL_IPS

    @property
    def customer_host_ip(self) -> str:
        return CUSTOMER_HOST_IP

    @property
    def space_host_ip(self) -> str:
        return SPACE_HOST_IP

    # veth names are per prefix but live inside the namespaces, so they never clash.
    _CUST_VETH = "vc"
    _SPACE_VETH = "vs"

    def create(self) -> None:
        """Build both namespaces from scratch (stale ones of this prefix go first)."""
        self.destroy()
        try:
            self._build()
        except subprocess.CalledProcessError as e:
            log.error("lab topology %s failed at %s: %s", self.prefix, e.cmd, e.stderr.strip())
            self.destroy()
            raise
        log.info("lab topology %s created", self.prefix)

    def _build(self) -> None:
        cust, space = self.cust_ns, self.space_ns
        for ns in (cust, space):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        # Created inside cust so no interface ever appears in the root namespace.
        ip("-n", cust, "link", "add", self._CUST_VETH, "type", "veth",
           "peer", "name", self._SPACE_VETH, "netns", space)
        ip("-n", cust, "addr", "add", f"{CUSTOMER_PUBLIC_IP}/{PUBLIC_PREFIXLEN}", "dev", self._CUST_VETH)
        address_space_side(space, self._SPACE_VETH)
        ip("-n", cust, "addr", "add", f"{CUSTOMER_HOST_IP}/32", "dev", "lo")
        ip("-n", cust, "link", "set", self._CUST_VETH, "up")
        ip("-n", cust, "route", "add", TUNNEL_CIDR, "via", SPACE_PUBLIC_IP)

    def add_customer_host(self, address: str) -> None:
        """One more LAN host address in the customer namespace (on lo, like the first)."""
        ip("-n", self.cust_ns, "addr", "add", f"{address}/32", "dev", "lo")

    def write_hosts(self, entries: dict[str, str]) -> None:
        """Give the customer namespace its own /etc/hosts (name -> address) and make
        files the only source of host names there, so no lookup leaves the lab. Processes
        started afterwards see it; rewriting it in place (same inode, under the bind
        mount) moves a name for processes already running."""
        folder = os.path.join(NETNS_ETC, self.cust_ns)
        os.makedirs(folder, exist_ok=True)
        lines = ["127.0.0.1 localhost", *(f"{address} {name}" for name, address in entries.items())]
        with open(os.path.join(folder, "hosts"), "w") as f:  # "w" truncates: the inode stays
            f.write("\n".join(lines) + "\n")
        nsswitch = os.path.join(folder, "nsswitch.conf")
        if not os.path.exists(nsswitch):
            with open("/etc/nsswitch.conf") as f:
                kept = [line for line in f if not line.startswith("hosts:")]
            with open(nsswitch, "w") as f:
                f.writelines([*kept, "hosts: files\n"])

    def _remove_etc(self) -> None:
        for ns in self.namespaces:
            folder = os.path.join(NETNS_ETC, ns)
            if os.path.isdir(folder):
                shutil.rmtree(folder)
        try:
            os.rmdir(NETNS_ETC)  # only when empty: another lab's or the admin's files stay
        except OSError:
            pass

    def destroy(self) -> None:
        """Kill every process left in the namespaces (by pid), then delete them and
        their /etc/netns files."""
        self._remove_etc()
        for ns in self.namespaces:
            if not netns_exists(ns):
                continue
            pids = netns_pids(ns)
            if pids:
                log.info("killing %s leftover process(es) in %s", len(pids), ns)
                kill_pids(pids)
            result = ip("netns", "del", ns, check=False)
            if result.returncode != 0:
                log.warning("could not delete netns %s: %s", ns, result.stderr.strip())

    def pids(self) -> list[int]:
        """Every process still running inside one of the namespaces."""
        return [pid for ns in self.namespaces if netns_exists(ns) for pid in netns_pids(ns)]
