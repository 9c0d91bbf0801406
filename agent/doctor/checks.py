"""The checks of the doctor. Each is a small function over facts passed in (plugin
names, sysctl text, API answers) that returns a Check with a fix for anything not OK.
Nothing here prints or talks to charon or the API itself: report.py gathers the facts
(through facts.py) and renders the results; the nftables checks live in firewall.py.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.config import ConnectionConfig
from agent.core.addresses import is_private_network
from agent.core.desired import TCP_MSS
from agent.core.model import ConnectionStatus, VpnAnswer, VpnConnection
from agent.core.modes import Mode
from agent.core.selectors import TrafficSelectors, first_selector_only, selector_fixes, selector_problem

OK, WARN, FAIL = "OK", "WARN", "FAIL"

START_CHARON = "start charon-systemd: systemctl start strongswan"
# read-protected: read-only, and the answer's PSKs are protected data (README, Token scope).
NEW_TOKEN = "heroku authorizations:create -d 'vpn gateway agent' -s read-protected"
_CRYPTO_SET = ("aes", "sha2", "hmac", "gmp")  # aes256-sha256-modp2048 without openssl
# The article: a space also uses these, whatever its space_cidr_block says.
_SPACE_RESERVED = {"172.17.0.0/16": "a Private Space's default dyno CIDR",
                   "10.1.0.0/16": "reserved when the space has data services"}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report; `fix` says what to do (advice on an OK)."""

    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""


def check_charon(socket_path: str, version: str | None, error: str | None) -> Check:
    if version is None:
        return Check("charon", FAIL, f"VICI socket {socket_path} unreachable: {error}", START_CHARON)
    return Check("charon", OK, f"strongSwan {version}, VICI at {socket_path}")


def check_plugins(plugins: Iterable[str] | None, error: str | None = None) -> Check:
    if plugins is None:
        return Check("plugins", WARN, f"not checked: {error or 'charon unreachable'}")
    loaded = frozenset(plugins)
    fails, warns = [], []
    for name in ("vici", "socket-default"):
        if name not in loaded:
            fails.append(f"{name} missing")
    if "kernel-libipsec" in loaded:
        warns.append("kernel-libipsec loaded: ESP runs in userspace (slower; fine for a lab)")
    elif "kernel-netlink" not in loaded:
        fails.append("kernel-netlink missing: charon cannot install SAs in the kernel")
    if "openssl" not in loaded and not loaded.issuperset(_CRYPTO_SET):
        absent = ", ".join(p for p in _CRYPTO_SET if p not in loaded)
        warns.append(f"cannot confirm aes256-sha256-modp2048: no openssl plugin, and {absent} missing")
    if not fails and not warns:
        return Check("plugins", OK, "vici, kernel-netlink, socket-default and crypto for aes256-sha256-modp2048")
    fix = "load the plugins in /etc/strongswan.d/charon/<plugin>.conf (load = yes), then restart strongswan"
    if warns and not fails and "kernel-libipsec" in loaded:
        fix = "set load = no in /etc/strongswan.d/charon/kernel-libipsec.conf unless the kernel lacks ESP"
    return Check("plugins", FAIL if fails else WARN, "; ".join(fails + warns), fix)


def check_route_mode(connections: Iterable[ConnectionConfig], route_unsupported: str | None) -> Check:
    if route_unsupported is None:
        return Check("route mode", OK, "XFRM interfaces: route mode available")
    forced = [c.label for c in connections if c.mode is Mode.ROUTE]
    if forced:
        return Check("route mode", FAIL, f"{', '.join(forced)}: mode: route, but {route_unsupported}",
                     "set mode: auto or policy, or run a kernel with CONFIG_XFRM_INTERFACE (as root)")
    return Check("route mode", WARN, f"{route_unsupported}; mode: auto uses policy mode",
                 "policy mode keeps one tunnel up at a time; route mode needs CONFIG_XFRM_INTERFACE")


def check_rp_filter(read_file: Callable[[str], str], route_used: bool) -> Check:
    values = {}
    for scope in ("all", "default"):
        path = f"/proc/sys/net/ipv4/conf/{scope}/rp_filter"
        try:
            values[scope] = read_file(path).strip()
        except OSError as e:
            return Check("rp_filter", WARN, f"cannot read {path}: {e.strerror or e}")
    shown = f"all={values['all']} default={values['default']}"
    strict = [scope for scope, value in values.items() if value == "1"]
    if not strict:
        return Check("rp_filter", OK, f"{shown} (0 or 2: return traffic may use either tunnel)")
    if not route_used:
        return Check("rp_filter", OK, f"{shown}: strict is fine in policy mode; route mode needs 0 or 2")
    fix = "; ".join(f"sysctl -w net.ipv4.conf.{scope}.rp_filter=2" for scope in strict)
    return Check("rp_filter", WARN, f"{shown}: strict; route mode gets return traffic on either tunnel interface",
                 fix + " (and persist it in /etc/sysctl.d/)")


def check_mss(conn: ConnectionConfig, mode: Mode | None, space_cidr: str | None) -> Check:
    name = "mss"
    if conn.tcp_mss == 0:
        return Check(name, WARN, f"{conn.label}: tcp_mss: 0, no clamping; AWS tunnels do no path MTU discovery",
                     f"set tcp_mss: {TCP_MSS} (AWS's value)")
    if mode is Mode.ROUTE:
        return Check(name, OK, f"{conn.label}: the agent clamps TCP MSS to {conn.tcp_mss} on its tunnel interfaces")
    space = space_cidr or "<space CIDR>"
    rule = f"tcp flags syn tcp option maxseg size set {conn.tcp_mss}"
    return Check(name, OK, f"{conn.label}: policy mode: the agent does not clamp; clamp to {conn.tcp_mss} yourself",
                 "nft add table inet mss; nft add chain inet mss fwd '{ type filter hook forward priority mangle; }'; "
                 f"nft add rule inet mss fwd ip daddr {space} {rule}; nft add rule inet mss fwd ip saddr {space} {rule}")


def check_api_answer(label: str, vpn_name: str, space: str, answer: VpnAnswer) -> Check:
    message = f" ({answer.status_message})" if answer.status_message else ""
    vpn = answer.connection
    if vpn is None:
        detail = f"{label}: token accepted; VPN connection {answer.status_text}{message}"
        if answer.status is ConnectionStatus.FAILED:
            return Check("token", FAIL, detail, f"fix it in Heroku, e.g. re-create it: heroku spaces:vpn:connect "
                                                f"{vpn_name} -s {space} --ip ... --cidrs ...")
        return Check("token", WARN, detail, f"wait for it: heroku spaces:vpn:wait {vpn_name} -s {space}")
    tunnels = ", ".join(f"tunnel {t.number} {t.status.value}" for t in vpn.tunnels)
    return Check("token", OK, f"{label}: token accepted; status {answer.status_text}{message}, "
                              f"{len(vpn.tunnels)} tunnels ({tunnels})")


def check_api_error(label: str, kind: str, message: str, cache_state: str) -> Check:
    """`kind` is the PlatformApiError kind; `message` never holds the token (adapter rule)."""
    if kind == "auth":
        return Check("token", FAIL, f"{label}: token refused: {message}", NEW_TOKEN + ", then put it in api.token_file")
    if kind == "not_found":
        return Check("token", FAIL, f"{label}: {message}", "check space and vpn: heroku spaces:vpn:info VPN -s SPACE")
    if kind == "payload" and "pre_shared_key: missing" in message:
        # A token without access to protected data may well get the answer without PSKs.
        return Check("token", FAIL, f"{label}: the answer holds no PSKs: {message}",
                     f"use a token that may read protected data: {NEW_TOKEN}")
    if kind == "payload":
        return Check("token", FAIL, f"{label}: unusable answer: {message}", "fix the VPN's settings in Heroku")
    return Check("token", WARN, f"{label}: API unreachable: {message}; {cache_state}",
                 "check the network/proxy path to the Platform API (api.url)")


def check_cidrs(conn: ConnectionConfig, vpn: VpnConnection | None, source: str,
                detect: Callable[[str], str | None]) -> Check:
    name = "cidrs"
    if vpn is None:
        return Check(name, WARN, f"{conn.label}: not checked: no API answer and no cache",
                     "run doctor again once the Platform API answers")
    problems, warns = _cidr_problems(vpn, heroku=conn.static is None)
    local, local_warn = _local_address(conn, vpn, detect)
    if local is None:
        problems.append(local_warn)
    elif local_warn:
        warns.append(local_warn)
    cidrs = ", ".join(vpn.routable_cidrs) or "none"
    if problems:
        return Check(name, FAIL, f"{conn.label} ({source}): " + "; ".join(problems + warns),
                     "routable CIDRs must be RFC 1918 and apart from the space's CIDRs; set local_address if needed")
    if warns:
        return Check(name, WARN, f"{conn.label} ({source}): " + "; ".join(warns),
                     "pick routable CIDRs apart from the space's reserved ranges, or set local_id")
    return Check(name, OK, f"{conn.label} ({source}): {cidrs} <-> {vpn.space_cidr_block}; local address {local}")


def check_selectors(conn: ConnectionConfig, mode: Mode | None, vpn: VpnConnection, source: str) -> Check:
    """Several routable CIDRs cross the tunnel only with IKEv2 or wide selectors in route
    mode. `mode` is what runs here (None: the daemon would not start; judged by the config)."""
    name, mode = "selectors", mode or conn.mode
    where, routable = f"{conn.label} ({source})", vpn.routable_cidrs
    if selector_problem(vpn.ike_version, mode, routable, conn.traffic_selectors) is not None:
        return Check(name, FAIL, f"{where}: {first_selector_only(routable)}; the agent does not load it",
                     selector_fixes(mode))
    if conn.traffic_selectors is TrafficSelectors.WIDE and mode is Mode.ROUTE:
        return Check(name, OK, f"{where}: wide selectors (0.0.0.0/0) bound to the tunnel interfaces; "
                               f"the routes send {vpn.space_cidr_block} into the tunnel")
    if len(routable) > 1:
        return Check(name, OK, f"{where}: IKEv2: one CHILD_SA carries all {len(routable)} routable CIDRs")
    return Check(name, OK, f"{where}: one routable CIDR: {', '.join(routable) or 'none'}")


def _cidr_problems(vpn: VpnConnection, *, heroku: bool) -> tuple[list[str], list[str]]:
    problems, warns = [], []
    space = ipaddress.ip_network(vpn.space_cidr_block) if vpn.space_cidr_block else None
    if not vpn.routable_cidrs:
        problems.append("no routable CIDRs")
    for raw in vpn.routable_cidrs:
        net = ipaddress.ip_network(raw, strict=False)
        if not is_private_network(net):
            problems.append(f"{raw} is not RFC 1918")
        elif space is not None and net.overlaps(space):
            problems.append(f"{raw} overlaps the space CIDR {space}")
        elif heroku:
            warns += [f"{raw} overlaps {r} ({why})" for r, why in _SPACE_RESERVED.items()
                      if net.overlaps(ipaddress.ip_network(r))]
    return problems, warns


def _local_address(conn: ConnectionConfig, vpn: VpnConnection,
                   detect: Callable[[str], str | None]) -> tuple[str | None, str]:
    """(our address or None, a problem or warning text or "")."""
    if conn.local_address:
        local = conn.local_address
    elif not vpn.tunnels:
        return None, "no tunnels to detect local_address towards; set local_address"
    else:
        local = detect(vpn.tunnel(1).ip)
        if local is None:
            return None, f"no route to tunnel 1 ({vpn.tunnel(1).ip}) to detect local_address; set local_address"
    if conn.static is None and vpn.public_ip and local != vpn.public_ip and conn.local_id != vpn.public_ip:
        return local, (f"local address {local} is not the VPN's public_ip {vpn.public_ip} "
                       f"(behind NAT? set local_id: {vpn.public_ip})")
    return local, ""


def worst(checks: Iterable[Check]) -> str:
    statuses = {c.status for c in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK


def cache_state(path: str, exists: bool | None) -> str:
    """What the agent falls back on while the API is unreachable; None: unknown."""
    if exists is None:
        return f"cannot tell whether cache {path} exists (run as root)"
    if exists:
        return f"the agent would use its cache {path}"
    return f"no cache {path}: tunnels cannot start until the API answers"


# -- an HA pair (ha.enabled) ----------------------------------------------------------

INSTALL_ARPING = "apt-get install iputils-arping"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
KEEPALIVED_EXAMPLE = "/etc/space-vpn-agent/keepalived.example.conf"


def check_keepalived(pgrep: tuple[int, str, str] | None) -> Check:
    """`pgrep -x keepalived`: the VRRP daemon that moves the virtual address."""
    if pgrep is None:
        return Check("ha_keepalived", WARN, "not checked: pgrep is not installed", "apt-get install procps")
    if pgrep[0] == 0:
        pids = ", ".join(pgrep[1].split())
        return Check("ha_keepalived", OK, f"keepalived running (pid {pids})")
    return Check("ha_keepalived", FAIL, "keepalived is not running: nothing moves the virtual address to this node",
                 f"systemctl enable --now keepalived (example: {KEEPALIVED_EXAMPLE})")


def check_yield_file(path: str, folder_exists: bool, keepalived_conf: str | None) -> Check:
    """The split-brain guard's track file: its folder must exist before keepalived starts
    (keepalived drops a track file without one), and keepalived must track it."""
    name = "ha_yield_file"
    if not path:
        return Check(name, WARN, "ha.yield_file is empty: a node that yields in a split brain stops its tunnels, "
                     "but keepalived keeps the address there", f"set ha.yield_file and track it ({KEEPALIVED_EXAMPLE})")
    folder = os.path.dirname(path) or "."
    if not folder_exists:
        return Check(name, FAIL, f"the folder of ha.yield_file {path} is missing: keepalived drops the track file",
                     f"install -d -m 0700 {folder}, then systemctl restart keepalived")
    if keepalived_conf is None:
        return Check(name, WARN, f"not checked whether keepalived tracks {path}: cannot read {KEEPALIVED_CONF}")
    if path not in keepalived_conf:
        return Check(name, WARN, f"{KEEPALIVED_CONF} does not mention {path}: in a split brain keepalived keeps "
                     "the address on the node that yields", f"add its track_file block ({KEEPALIVED_EXAMPLE})")
    return Check(name, OK, f"keepalived tracks {path} (the split-brain guard)")


def check_vip(label: str, vip: str, interface: str | None, arping: tuple[int, str, str] | None) -> Check:
    """Who holds the virtual address, seen from this node. `interface`: where this node
    holds it (None: not here); `arping`: `arping -D` run from there (duplicate detection)."""
    name = "ha_vip"
    if interface is None:
        return Check(name, OK, f"{label}: {vip} is not on this node: a backup (its tunnels stand by)",
                     "the other node should hold it: run the doctor there too")
    if arping is None:
        return Check(name, WARN, f"{label}: {vip} on {interface}: master; not checked whether another node "
                     "answers for it too", INSTALL_ARPING)
    if arping[0] == 0:
        return Check(name, OK, f"{label}: {vip} on {interface}: master, and no other node answers for it")
    macs = sorted({word.strip("[]") for word in arping[1].split() if word.count(":") == 5})
    return Check(name, FAIL, f"{label}: {vip} on {interface}, and {', '.join(macs) or 'another node'} answers for it "
                 "too: split brain (both nodes master)",
                 "check that VRRP passes between the nodes (same virtual_router_id, firewall allows protocol 112)")


def check_nonlocal_bind(metrics_host: str | None, vips: Iterable[str], value: str | None) -> Check:
    """charon listens on every address, so a backup needs no nonlocal bind; a metrics
    endpoint bound to the virtual address does."""
    name = "ha_nonlocal_bind"
    if metrics_host not in set(vips):
        return Check(name, OK, "not needed: charon listens on every address and metrics are not on the virtual one")
    if value is not None and value.strip() == "1":
        return Check(name, OK, f"net.ipv4.ip_nonlocal_bind=1: the backup can listen on {metrics_host}")
    return Check(name, FAIL, f"metrics.listen uses the virtual address {metrics_host}: a backup cannot bind it",
                 "sysctl -w net.ipv4.ip_nonlocal_bind=1 (persist it in /etc/sysctl.d/), or listen on 127.0.0.1")
