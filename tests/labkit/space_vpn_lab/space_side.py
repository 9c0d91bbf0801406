"""The far end of the lab VPN: one charon playing Heroku/AWS's two tunnel endpoints.

Like AWS it is a responder only (start_action none, never initiates), so a tunnel it
drops stays down until the customer re-initiates. One charon can play the far end of
several VPN connections (a gateway serving two spaces), each a SpaceSide of its own
`name` and endpoints (Lab.add_vpn). Knobs simulate maintenance:
graceful (DELETE sent) and silent (nftables blackhole, then forget the SA).
Route-based (like an AWS VGW): one XFRM interface per tunnel, and the lab's route
to the customer picks the tunnel replies take (`answer_via`). Children accept all of
the customer's routable CIDRs (IKEv2 puts them in one CHILD_SA), or 0.0.0.0/0 both ways
(`wide_selectors`, route-based only: AWS's VTI side).
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import vici

from space_vpn_lab.charon_instance import CharonInstance
from space_vpn_lab.topology import CUSTOMER_PUBLIC_IP, ROUTABLE_CIDR, SPACE_CIDR

log = logging.getLogger(__name__)

PROPOSAL = "aes256-sha256-modp2048"
#: nftables table (family inet) owned by the lab in the space namespace.
NFT_TABLE = "svpn_lab"
NFT_SET = "blocked"
NFT_NO_QUICK_MODE = "no_quick_mode"
TERMINATE_TIMEOUT_MS = 5000
UNIQUE_POLICIES = ("no", "never", "keep", "replace")
#: Route-based space side: XFRM interface name and if_id per tunnel number.
SPACE_XFRM_IFACES = {1: ("sx1", 101), 2: ("sx2", 102)}


class SpaceSideError(Exception):
    """A space-side VICI or nftables operation failed."""


@dataclass(frozen=True)
class Lifetimes:
    """SA lifetimes in seconds, as swanctl.conf takes them: the IKE_SA is rekeyed (IKEv2)
    or reauthenticated (IKEv1) after `ike_s`, the CHILD_SA rekeyed after `child_rekey_s`
    and gone at `child_s`. charon starts either up to its margin early (rand_time)."""

    ike_s: int = 28800
    child_s: int = 3600
    child_rekey_s: int = 3330


#: AWS tunnel defaults: phase 1 28800 s, phase 2 3600 s with a 270 s rekey margin.
AWS_LIFETIMES = Lifetimes()


@dataclass(frozen=True)
class SpaceTunnel:
    """One endpoint as Heroku's API would describe it: outside IP and PSK."""

    ip: str
    psk: str = field(repr=False)


@dataclass(frozen=True)
class TunnelSas:
    """What the space charon has for one tunnel. ike_state is None when no IKE SA."""

    ike_state: str | None
    child_states: tuple[str, ...]
    ike_sa_count: int = 0

    @property
    def up(self) -> bool:
        return self.ike_state == "ESTABLISHED" and "INSTALLED" in self.child_states


def conn_name(number: int, side: str = "space") -> str:
    return f"{side}-t{number}"


def _drain(stream: Iterable) -> list:
    """Streamed VICI calls send nothing until iterated: always consume them whole."""
    return list(stream)


class SpaceSide:
    """Loads the responder conns into `charon` and owns the nft table that fakes
    silent maintenance. Call `load()` once the charon runs; `destroy()` at the end."""

    def __init__(self, charon: CharonInstance, tunnels: Sequence[SpaceTunnel | tuple[str, str]],
                 ike_version: int = 1, customer_id: str = CUSTOMER_PUBLIC_IP,
                 customer_ip: str = CUSTOMER_PUBLIC_IP, local_ts: str = SPACE_CIDR,
                 remote_ts: str | Sequence[str] = ROUTABLE_CIDR, route_based: bool = False,
                 wide_selectors: bool = False, name: str = "space", unique: str = "replace") -> None:
        self.charon = charon
        #: swanctl.conf `unique` of the responder conns. "replace": a new IKE SA with the
        #: same identities deletes the old one once established (a second gateway taking
        #: over the customer address and identity, HA); "no" only on INITIAL_CONTACT;
        #: "never" keeps both; "keep" refuses the newcomer.
        if unique not in UNIQUE_POLICIES:
            raise ValueError(f"unique must be one of {', '.join(UNIQUE_POLICIES)}, got {unique!r}")
        self.unique = unique
        #: Names its conns (`NAME-t1`, `NAME-t2`), shared keys and nft table.
        self.name = name
        self._nft_table = NFT_TABLE if name == "space" else f"{NFT_TABLE}_{name}"
        self.tunnels = tuple(SpaceTunnel(*t) if isinstance(t, tuple) else t for t in tunnels)
        self.ike_version = ike_version
        self.customer_id = customer_id
        self.customer_ip = customer_ip
        self.local_ts = local_ts
        #: The customer's routable CIDRs: what the children accept and replies are routed to.
        self.remote_ts: tuple[str, ...] = (remote_ts,) if isinstance(remote_ts, str) else tuple(remote_ts)
        #: 0.0.0.0/0 both ways, bound to the XFRM interfaces: the routes choose.
        self.wide_selectors = wide_selectors
        self.childless = "allow"  # IKEv2 RFC 6023 as responder; "never" plays a peer without it
        #: When the space side rekeys (AWS rekeys too); short ones make a soak see many.
        self.lifetimes = AWS_LIFETIMES
        #: True: children carry if_id_in/out and replies follow the lab's route (needs
        #: kernel XFRM interfaces, i.e. the kernel lab); False: one policy per tunnel.
        self.route_based = route_based
        self.answering_tunnel: int | None = None
        self._nft_ready = False
        if route_based and len(self.tunnels) > len(SPACE_XFRM_IFACES):
            raise ValueError("route-based space side supports %d tunnels" % len(SPACE_XFRM_IFACES))
        if route_based and name != "space":
            raise ValueError("a route-based space side owns the XFRM interfaces: only one per lab")
        if wide_selectors and not route_based:
            # Unbound 0.0.0.0/0 policies would take the namespace's IKE traffic too.
            raise ValueError("wide selectors need a route-based space side")

    # --- configuration -------------------------------------------------------

    def load(self) -> None:
        """(Re)load shared keys and conns for every tunnel, and the nft table."""
        self._ensure_nft_table()
        if self.route_based:
            self._ensure_interfaces()
        try:
            with self.charon.connected() as session:
                for number, tunnel in enumerate(self.tunnels, start=1):
                    self._load_tunnel(session, number, tunnel)
        except vici.exception.CommandException as e:
            # charon's message names the failing option, never a key's value.
            raise SpaceSideError(f"space side load failed: {e}") from e
        log.info("space side loaded %s responder tunnel(s), IKEv%s",
                 len(self.tunnels), self.ike_version)

    def reconfigure(self, ike_version: int | None = None, psks: Sequence[str] | None = None,
                    customer_id: str | None = None, remote_ts: str | Sequence[str] | None = None,
                    childless: str | None = None, tunnel_ips: Sequence[str] | None = None,
                    lifetimes: Lifetimes | None = None) -> None:
        """Change settings and reload conns + shared keys. Existing SAs are kept
        (as on AWS, new settings apply to the next negotiation). New `tunnel_ips` must
        already be addresses of the space namespace (Lab.add_tunnel_ips)."""
        if ike_version is not None:
            self.ike_version = ike_version
        if psks is not None:
            if len(psks) != len(self.tunnels):
                raise ValueError("one PSK per tunnel expected")
            self.tunnels = tuple(SpaceTunnel(t.ip, p) for t, p in zip(self.tunnels, psks))
        if tunnel_ips is not None:
            if len(tunnel_ips) != len(self.tunnels):
                raise ValueError("one IP per tunnel expected")
            self.tunnels = tuple(SpaceTunnel(ip, t.psk) for t, ip in zip(self.tunnels, tunnel_ips))
        if customer_id is not None:
            self.customer_id = customer_id
        if remote_ts is not None:
            self.remote_ts = (remote_ts,) if isinstance(remote_ts, str) else tuple(remote_ts)
        if childless is not None:
            self.childless = childless
        if lifetimes is not None:
            self.lifetimes = lifetimes
        self.load()

    def _load_tunnel(self, session: vici.Session, number: int, tunnel: SpaceTunnel) -> None:
        name = conn_name(number, self.name)
        session.load_shared({
            "id": name,
            "type": "IKE",
            "data": tunnel.psk,
            "owners": [tunnel.ip, self.customer_id],
        })
        session.load_conn({name: self._conn(number, tunnel)})

    def _conn(self, number: int, tunnel: SpaceTunnel) -> dict:
        """AWS tunnel defaults: DPD 10 s / 30 s clear, phase 1 28800 s, phase 2 3600 s
        with a 270 s rekey margin (`lifetimes`), startup action Add (never initiate)."""
        conn = {
            "version": str(self.ike_version),
            "local_addrs": [tunnel.ip],
            "remote_addrs": [self.customer_ip],
            "proposals": [PROPOSAL],
            "dpd_delay": "10s",
            "unique": self.unique,
            "send_certreq": "no",
            "local": {"auth": "psk", "id": tunnel.ip},
            "remote": {"auth": "psk", "id": self.customer_id},
            "children": {conn_name(number, self.name): self._child(number)},
        }
        if self.ike_version == 1:
            # IKEv1 has no real IKE rekey: the lifetime is a reauthentication.
            conn.update(dpd_timeout="30s", reauth_time=f"{self.lifetimes.ike_s}s")
        else:
            conn.update(rekey_time=f"{self.lifetimes.ike_s}s", mobike="no", childless=self.childless)
        return conn

    def _child(self, number: int) -> dict:
        wide = ["0.0.0.0/0"] if self.wide_selectors else None
        child = {
            "mode": "tunnel",
            "local_ts": wide or [self.local_ts],
            "remote_ts": wide or ([self.remote_ts] if isinstance(self.remote_ts, str) else list(self.remote_ts)),
            "esp_proposals": [PROPOSAL],
            "life_time": f"{self.lifetimes.child_s}s",
            "rekey_time": f"{self.lifetimes.child_rekey_s}s",
            "dpd_action": "clear",
            "start_action": "none",
        }
        if self.route_based:
            if_id = str(SPACE_XFRM_IFACES[number][1])
            child.update(if_id_in=if_id, if_id_out=if_id)
        return child

    # --- maintenance knobs -----------------------------------------------------

    def graceful_down(self, number: int) -> None:
        """Terminate tunnel `number`'s IKE SA; the customer receives a DELETE."""
        self._answer_over_the_other(number)
        self._terminate(number, force=False)
        log.info("space side: tunnel %s terminated gracefully", number)

    def _answer_over_the_other(self, number: int) -> None:
        """AWS answers over a tunnel that is still up (route-based space side only)."""
        if self.route_based and len(self.tunnels) > 1 and self.answering_tunnel == number:
            self.answer_via(3 - number)

    def block(self, number: int) -> None:
        """Blackhole the endpoint (an endpoint under maintenance answers nothing)."""
        self._nft("add", "element", "inet", self._nft_table, NFT_SET, "{ %s }" % self._ip(number))

    def silent_down(self, number: int) -> None:
        """Blackhole the endpoint, then forget its SA without the peer noticing:
        the customer only finds out through DPD."""
        self._answer_over_the_other(number)  # first: no reply heads into the blackhole
        self.block(number)
        self._terminate(number, force=True)
        log.info("space side: tunnel %s silently dropped", number)

    def ignore_quick_mode(self, number: int, ignore: bool = True) -> None:
        """Main Mode is answered, Quick Mode is not (ignore=False: answered again)."""
        verb = "add" if ignore else "delete"
        self._nft(verb, "element", "inet", self._nft_table, NFT_NO_QUICK_MODE, "{ %s }" % self._ip(number),
                  check=ignore)

    def forget(self, number: int) -> None:
        """Drop tunnel `number`'s SAs without the peer hearing of it (the DELETE is
        blackholed); the endpoint answers again right after."""
        self.block(number)
        try:
            self._terminate(number, force=True)
        finally:
            self.restore(number)
        log.info("space side: tunnel %s forgot its SAs", number)

    def rekey(self, number: int) -> bool:
        """Rekey tunnel `number`'s CHILD_SA from this side, as AWS starts rekeys itself
        (an IKEv1 Quick Mode responder takes the initiator's lifetime, so the far end's own
        timer may never fire). False when the tunnel has no CHILD_SA to rekey."""
        try:
            with self.charon.connected(timeout_s=5.0) as session:
                session.rekey({"child": conn_name(number, self.name)})
        except vici.exception.CommandException as e:
            log.info("space side: tunnel %s not rekeyed: %s", number, e)
            return False
        return True

    def restore(self, number: int) -> None:
        """Lift the blackhole. Still a responder: the customer must re-initiate."""
        result = self._nft("delete", "element", "inet", self._nft_table, NFT_SET,
                           "{ %s }" % self._ip(number), check=False)
        if result.returncode != 0:
            log.info("space side: tunnel %s was not blackholed", number)
        log.info("space side: tunnel %s restored", number)

    def blocked_ips(self) -> list[str]:
        """Endpoint addresses currently blackholed (nft's JSON output)."""
        result = self._nft("-j", "list", "set", "inet", self._nft_table, NFT_SET)
        for item in json.loads(result.stdout).get("nftables", []):
            if "set" in item:
                return [str(e) for e in item["set"].get("elem", [])]
        return []

    def answer_via(self, number: int) -> None:
        """Route-based only: send everything for the customer's routable CIDRs over
        tunnel `number` (the way AWS picks the return tunnel by itself)."""
        if not self.route_based:
            raise SpaceSideError("answer_via needs a route-based space side")
        ifname = SPACE_XFRM_IFACES[number][0]
        for cidr in self.remote_ts:
            self._ip_cmd("route", "replace", cidr, "dev", ifname)
        self.answering_tunnel = number
        log.info("space side: answering over tunnel %s (%s)", number, ifname)

    def _ensure_interfaces(self) -> None:
        """One XFRM interface per tunnel; replies go over tunnel 1 until told otherwise.
        Links are never taken down later: a down xfrm link drops inbound (XfrmInNoPols)."""
        for number in range(1, len(self.tunnels) + 1):
            ifname, if_id = SPACE_XFRM_IFACES[number]
            if self._ip_cmd("link", "show", ifname, check=False).returncode != 0:
                self._ip_cmd("link", "add", ifname, "type", "xfrm", "if_id", str(if_id))
            self._ip_cmd("link", "set", ifname, "up")
        if self.answering_tunnel is None:
            self.answer_via(1)

    def _ip_cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["ip", "-n", self.charon.netns, *args]
        result = subprocess.run(argv, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise SpaceSideError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def _terminate(self, number: int, force: bool) -> None:
        request = {"ike": conn_name(number, self.name), "timeout": TERMINATE_TIMEOUT_MS}
        if force:
            request["force"] = "yes"
        try:
            with self.charon.connected() as session:
                _drain(session.terminate(request))
        except vici.exception.CommandException as e:
            # IKEv2 with force: charon destroys the SA when its DELETE goes unanswered and
            # still reports a failure; only an SA that is still there is one.
            if not (force and self._gone(number)):
                raise SpaceSideError(f"terminate tunnel {number} failed: {e}") from e

    def _gone(self, number: int, within: float = 2.0) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.sas()[number].ike_state is None:
                return True
            time.sleep(0.05)
        log.warning("space side: tunnel %s still has %s", number, self.sas()[number])
        return False

    def _ip(self, number: int) -> str:
        return self.tunnels[number - 1].ip

    # --- observation ---------------------------------------------------------------

    def sas(self) -> dict[int, TunnelSas]:
        """list-sas reduced to what tests assert on, keyed by tunnel number."""
        found: dict[int, list[dict]] = {n: [] for n in range(1, len(self.tunnels) + 1)}
        names = {conn_name(n, self.name): n for n in found}
        with self.charon.connected() as session:
            entries = _drain(session.list_sas())
        for entry in entries:
            for ike_name, ike in entry.items():
                if ike_name in names:
                    found[names[ike_name]].append(ike)
        return {n: summarize_ike_sas(ikes) for n, ikes in found.items()}

    # --- nftables ----------------------------------------------------------------------

    def _ensure_nft_table(self) -> None:
        if self._nft_ready:
            return
        # Drop both directions, incl. IKE/NAT-T to and from the endpoint address.
        script = f"""
table inet {self._nft_table} {{
  set {NFT_SET} {{
    type ipv4_addr
  }}
  set {NFT_NO_QUICK_MODE} {{
    type ipv4_addr
  }}
  chain input {{
    type filter hook input priority -10; policy accept;
    ip daddr @{NFT_SET} drop
    ip saddr @{NFT_SET} drop
    # ISAKMP exchange type 32, Quick Mode: byte 18 of the ISAKMP header, which follows the
    # UDP header (8 bytes) on port 500 and the non-ESP marker (4 more) on port 4500.
    ip daddr @{NFT_NO_QUICK_MODE} udp dport 500 @th,208,8 32 drop
    ip daddr @{NFT_NO_QUICK_MODE} udp dport 4500 @th,240,8 32 drop
  }}
  chain output {{
    type filter hook output priority -10; policy accept;
    ip saddr @{NFT_SET} drop
    ip daddr @{NFT_SET} drop
  }}
}}
"""
        self._nft("delete", "table", "inet", self._nft_table, check=False)
        self._nft("-f", "-", stdin=script)
        self._nft_ready = True

    def destroy(self) -> None:
        """Remove the nft table (the namespace may already be gone: that is fine)."""
        self._nft("delete", "table", "inet", self._nft_table, check=False)
        self._nft_ready = False
        # The xfrm links and the route go with the namespace.
        self.answering_tunnel = None

    def _nft(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        argv = ["ip", "netns", "exec", self.charon.netns, "nft", *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise SpaceSideError(f"nft {' '.join(args)} failed: {result.stderr.strip()}")
        return result


def summarize_ike_sas(ikes: list[dict]) -> TunnelSas:
    """Reduce list-sas entries (values as bytes) of one conn to a TunnelSas.
    ESTABLISHED wins when a reauth briefly shows two IKE SAs."""
    if not ikes:
        return TunnelSas(ike_state=None, child_states=())
    states = [_text(ike.get("state")) for ike in ikes]
    ike_state = "ESTABLISHED" if "ESTABLISHED" in states else states[0]
    children = tuple(_text(child.get("state"))
                     for ike in ikes for child in (ike.get("child-sas") or {}).values())
    return TunnelSas(ike_state=ike_state, child_states=children, ike_sa_count=len(ikes))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
