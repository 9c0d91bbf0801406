"""`space-vpn-agent doctor` and `agentctl doctor`: every check's OK, WARN and FAIL paths
over fakes (no charon, kernel, nft or network), the report as text and JSON, exit codes,
and that the API token never reaches the output."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from agent.adapters.charon import CharonCommandFailed, CharonUnavailable
from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.credentials import CredentialError, load_token
from agent.adapters.heroku import ApiAuthError, ApiNotFound, ApiPayloadError, ApiUnavailable, FetchResult, PlatformApi
from agent.cli import agentctl
from agent.config import AgentConfig, ApiConfig, ConnectionConfig, StaticConfig, StaticTunnelConfig
from agent.core.desired import TCP_MSS
from agent.core.model import ConnectionStatus, Secret, Tunnel, VpnConnection
from agent.core.modes import Mode
from agent.core.payload import parse_vpn_answer, parse_vpn_connection
from agent.daemon import main as daemon_main
from agent.core.selectors import TrafficSelectors
from agent.doctor import checks as dc, facts, firewall as fw, report
from agent.doctor.checks import Check
from agent.doctor.facts import CharonFacts

REPO = Path(__file__).resolve().parents[2]
TOKEN = "HRKU-doctor-test-token-0123456789"
PLUGINS = ("charon", "aes", "sha2", "hmac", "gmp", "openssl", "kernel-netlink", "socket-default", "vici")
TUNNEL_IPS = ("52.44.146.197", "52.44.146.198")


def raw_vpn(**fields) -> dict:
    body = {
        "id": "123456789012", "name": "office", "public_ip": "35.161.69.30",
        "routable_cidrs": ["172.16.0.0/16"], "space_cidr_block": "10.0.0.0/16", "ike_version": 1,
        "status": "active", "status_message": "",
        "tunnels": [{"ip": ip, "customer_ip": "35.161.69.30", "pre_shared_key": "psk.not_shown",
                     "status": "UP", "status_message": "", "last_status_change": "2016-10-25T22:09:05Z"}
                    for ip in TUNNEL_IPS],
    }
    return {**body, **fields}


def vpn(**fields) -> VpnConnection:
    return parse_vpn_connection(raw_vpn(**fields))


def raw_vpn_connection(routable: tuple[str, ...], space: str = "10.0.0.0/16") -> VpnConnection:
    """A VpnConnection that parse_vpn_connection would refuse (as a stale cache might hold)."""
    return VpnConnection(id="1", name="office", public_ip="35.161.69.30", routable_cidrs=routable,
                         space_cidr_block=space, ike_version=1, status=ConnectionStatus.ACTIVE,
                         tunnels=(Tunnel(1, TUNNEL_IPS[0], Secret("x")), Tunnel(2, TUNNEL_IPS[1], Secret("y"))))


HEROKU = ConnectionConfig(space="acme-space", vpn="office", local_address="35.161.69.30")
STATIC = ConnectionConfig(
    space="static", vpn="datacenter", local_address="198.51.100.7", mode=Mode.POLICY,
    static=StaticConfig(ike_version=2, routable_cidrs=("192.168.10.0/24",), space_cidr_block="10.20.0.0/16",
                        tunnels=(StaticTunnelConfig("198.51.100.1", Secret("k1")),
                                 StaticTunnelConfig("198.51.100.2", Secret("k2")))))


class FakeApi:
    def __init__(self, answers: dict):
        self.answers = answers
        self.closed = False

    def get_vpn_connection(self, space, vpn_name, etag=None):
        answer = self.answers[(space, vpn_name)]
        if isinstance(answer, Exception):
            raise answer
        return FetchResult(parse_vpn_answer(answer), answer, None, None)

    def close(self):
        self.closed = True


def nft_doc(*items) -> str:
    return json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *items]})


def chain(name="input", policy="drop", family="inet", table="filter"):
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1,
                      "type": "filter", "hook": name, "prio": 0, "policy": policy}}


def rule(*expr, chain_name="input", family="inet", table="filter"):
    return {"rule": {"family": family, "table": table, "chain": chain_name, "handle": 2, "expr": list(expr)}}


def match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


UDP_DPORT = {"payload": {"protocol": "udp", "field": "dport"}}
L4PROTO = {"meta": {"key": "l4proto"}}
CT_STATE = {"ct": {"key": "state"}}
ACCEPT, DROP = {"accept": None}, {"drop": None}


def fakes(**overrides) -> dict:
    """Probes of a healthy route-mode host whose API answers."""
    probes = dict(
        charon=lambda path: CharonFacts("5.9.8", PLUGINS),
        route_support=lambda: None,
        run=lambda argv: (0, nft_doc(chain(policy="accept")), ""),
        read_file=lambda path: "2\n",
        environ={"HEROKU_API_KEY": TOKEN},
        api_factory=lambda url, token: FakeApi({("acme-space", "office"): raw_vpn()}),
        detect=lambda ip: "35.161.69.30",
    )
    return probes | overrides


# -- 1. charon ---------------------------------------------------------------------------

def test_charon_ok_and_fail():
    assert dc.check_charon("/run/c.vici", "5.9.8", None) == Check("charon", "OK", "strongSwan 5.9.8, VICI at /run/c.vici")
    down = dc.check_charon("/run/c.vici", None, "cannot reach charon at /run/c.vici: No such file or directory")
    assert down.status == "FAIL"
    assert down.fix == "start charon-systemd: systemctl start strongswan"


class FakeCharon:
    def __init__(self, version=None, plugins=None, error=None, plugins_error=None):
        self._version, self._plugins, self._error, self._plugins_error = version, plugins, error, plugins_error
        self.closed = False

    def version(self):
        if self._error:
            raise self._error
        return self._version

    def plugins(self):
        if self._plugins_error:
            raise self._plugins_error
        return self._plugins

    def close(self):
        self.closed = True


def test_read_charon_gathers_version_and_plugins_and_closes():
    client = FakeCharon("5.9.8", PLUGINS)
    assert facts.read_charon("/s", lambda path: client) == CharonFacts("5.9.8", PLUGINS)
    assert client.closed


def test_read_charon_unreachable_and_stats_refused():
    down = facts.read_charon("/s", lambda p: FakeCharon(error=CharonUnavailable("cannot reach charon at /s")))
    assert down == CharonFacts(None, None, "cannot reach charon at /s")
    refused = facts.read_charon("/s", lambda p: FakeCharon("5.9.8", plugins_error=CharonCommandFailed("stats: no")))
    assert refused.version == "5.9.8" and refused.plugins is None and "stats" in refused.error


def test_real_charon_client_reports_a_missing_socket(tmp_path):
    found = facts.read_charon(str(tmp_path / "absent.vici"))
    assert found.version is None and "absent.vici" in found.error


# -- 2. plugins --------------------------------------------------------------------------

@pytest.mark.parametrize("plugins, status, words", [
    (PLUGINS, "OK", "vici, kernel-netlink"),
    (tuple(p for p in PLUGINS if p != "openssl"), "OK", "aes256-sha256-modp2048"),
    (PLUGINS + ("kernel-libipsec",), "WARN", "userspace"),
    (tuple(p for p in PLUGINS if p not in ("openssl", "gmp")), "WARN", "gmp missing"),
    (tuple(p for p in PLUGINS if p != "kernel-netlink"), "FAIL", "kernel-netlink missing"),
    (tuple(p for p in PLUGINS if p != "socket-default"), "FAIL", "socket-default missing"),
])
def test_plugins(plugins, status, words):
    result = dc.check_plugins(plugins)
    assert (result.status, result.name) == (status, "plugins")
    assert words in result.detail
    assert bool(result.fix) == (status != "OK")


def test_plugins_not_checked_without_charon():
    assert dc.check_plugins(None, "cannot reach charon") == Check("plugins", "WARN", "not checked: cannot reach charon")


# -- 3. route mode -----------------------------------------------------------------------

def test_route_mode():
    assert dc.check_route_mode([HEROKU], None).detail == "XFRM interfaces: route mode available"
    auto = dc.check_route_mode([HEROKU], "no XFRM")
    assert auto.status == "WARN" and auto.detail == "no XFRM; mode: auto uses policy mode"
    forced = dc.check_route_mode([ConnectionConfig("s", "v", mode=Mode.ROUTE), STATIC], "no XFRM")
    assert forced.status == "FAIL" and forced.detail.startswith("s/v: mode: route")


@pytest.mark.parametrize("mode, route_unsupported, route_used, route_check", [
    (Mode.AUTO, None, True, "OK"),
    (Mode.AUTO, "no XFRM", False, "WARN"),
    (Mode.ROUTE, None, True, "OK"),
    (Mode.ROUTE, "no XFRM", False, "FAIL"),  # the daemon refuses to start (resolve_mode raises)
    (Mode.POLICY, None, False, "OK"),
])
def test_run_checks_resolves_modes_as_the_daemon_does(tmp_path, mode, route_unsupported, route_used, route_check):
    """Through agent.core.modes.resolve_mode: the MSS advice and the strict rp_filter
    warning follow the mode the daemon would run."""
    conn = ConnectionConfig("acme-space", "office", local_address="35.161.69.30", mode=mode)
    found = report.run_checks(AgentConfig(connections=(conn,), state_dir=str(tmp_path)),
                              cache=ConnectionCache(tmp_path),
                              **fakes(route_support=lambda: route_unsupported, read_file=lambda path: "1\n"))
    by_name = {c.name: c for c in found}
    assert by_name["route mode"].status == route_check
    assert ("the agent clamps" in by_name["mss"].detail) == route_used
    assert by_name["rp_filter"].status == ("WARN" if route_used else "OK")


# -- 4. firewall -------------------------------------------------------------------------

FIX = "allow UDP 500, UDP 4500 and ESP (protocol 50) to and from 52.44.146.197, 52.44.146.198"


def firewall(*items) -> Check:
    return fw.check_firewall((0, nft_doc(*items), ""), None, list(TUNNEL_IPS))


def test_firewall_open_when_no_chain_drops():
    assert firewall().status == "OK"
    assert firewall(chain(policy="accept"), chain("output", policy="accept")).status == "OK"


def test_firewall_policy_drop_without_accepts_warns_with_the_fix():
    result = firewall(chain(), rule(match(CT_STATE, ["established", "related"]), ACCEPT),
                      rule(match({"payload": {"protocol": "tcp", "field": "dport"}}, 22), ACCEPT))
    assert result == Check("firewall", "WARN",
                           "inet filter input: policy drop without an accept for UDP 500, UDP 4500, ESP", FIX)


def test_firewall_policy_drop_with_explicit_accepts_is_ok():
    result = firewall(chain(), rule(match(UDP_DPORT, {"set": [500, 4500]}), ACCEPT),
                      rule(match(L4PROTO, "esp"), ACCEPT))
    assert result.status == "OK"


def test_firewall_partial_accept_names_what_is_missing():
    result = firewall(chain(), rule(match(UDP_DPORT, 500), ACCEPT))
    assert result.detail == "inet filter input: policy drop without an accept for UDP 4500, ESP"


def test_firewall_explicit_drop_before_accept():
    result = firewall(chain("output", policy="accept"),
                      rule(match(L4PROTO, "esp"), DROP, chain_name="output"),
                      rule(ACCEPT, chain_name="output"))
    assert result.detail == "inet filter output: a rule drops ESP"


def test_firewall_ignores_forward_and_ip6_chains():
    assert firewall(chain("forward"), chain(family="ip6", table="f6")).status == "OK"


@pytest.mark.parametrize("nft, error, words", [
    (None, "nft not usable (No such file or directory)", "cannot inspect: nft not usable"),
    ((1, "", "Error: Operation not permitted\nmore"), None, "cannot inspect: nft: Error: Operation not permitted"),
    ((0, "not json", ""), None, "cannot inspect: unexpected nft output"),
])
def test_firewall_cannot_inspect(nft, error, words):
    result = fw.check_firewall(nft, error, [])
    assert result.status == "WARN" and result.detail.startswith(words)
    assert result.fix.endswith("to and from both tunnel IPs")


# -- 5. rp_filter ------------------------------------------------------------------------

def sysctls(all_value, default_value):
    values = {"/proc/sys/net/ipv4/conf/all/rp_filter": all_value,
              "/proc/sys/net/ipv4/conf/default/rp_filter": default_value}
    return lambda path: values[path] + "\n"


def test_rp_filter_loose_or_off_is_ok():
    assert dc.check_rp_filter(sysctls("2", "0"), route_used=True).status == "OK"


def test_rp_filter_strict_warns_in_route_mode():
    result = dc.check_rp_filter(sysctls("0", "1"), route_used=True)
    assert result.status == "WARN" and "all=0 default=1" in result.detail
    assert result.fix.startswith("sysctl -w net.ipv4.conf.default.rp_filter=2")
    assert "all.rp_filter" not in result.fix


def test_rp_filter_strict_is_fine_in_policy_mode():
    assert dc.check_rp_filter(sysctls("1", "1"), route_used=False).status == "OK"


def test_rp_filter_unreadable():
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory")
    result = dc.check_rp_filter(missing, route_used=True)
    assert result.status == "WARN" and result.detail.startswith("cannot read /proc/sys/net/ipv4/conf/all/rp_filter")


# -- 6. MSS ------------------------------------------------------------------------------

def test_mss_route_mode_is_clamped_by_the_agent():
    result = dc.check_mss(HEROKU, Mode.ROUTE, "10.0.0.0/16")
    assert result == Check("mss", "OK", "acme-space/office: the agent clamps TCP MSS to 1379 on its tunnel interfaces")


def test_mss_policy_mode_advises_an_nft_rule():
    result = dc.check_mss(STATIC, Mode.POLICY, "10.20.0.0/16")
    assert result.status == "OK" and "does not clamp" in result.detail
    assert "ip daddr 10.20.0.0/16 tcp flags syn tcp option maxseg size set 1379" in result.fix


def test_mss_off_warns():
    result = dc.check_mss(ConnectionConfig("s", "v", tcp_mss=0), Mode.ROUTE, None)
    assert result.status == "WARN" and result.fix == f"set tcp_mss: {TCP_MSS} (AWS's value)"


# -- 7. token ----------------------------------------------------------------------------

def api_checks(tmp_path, answer, environ=None, loader=load_token, cached=None):
    cache = ConnectionCache(tmp_path)
    if cached is not None:
        cache.save("acme-space", "office", cached)
    config = AgentConfig(connections=(HEROKU,), state_dir=str(tmp_path))
    return report._check_api(config, environ if environ is not None else {"HEROKU_API_KEY": TOKEN}, loader,
                             lambda url, token: FakeApi({("acme-space", "office"): answer}), cache)


def test_token_ok(tmp_path):
    found, vpns, sources = api_checks(tmp_path, raw_vpn())
    assert found == [Check("token", "OK", "acme-space/office: token accepted; status active, "
                                          "2 tunnels (tunnel 1 UP, tunnel 2 UP)")]
    assert sources == {"acme-space-office": "API"} and vpns["acme-space-office"].space_cidr_block == "10.0.0.0/16"


def test_token_ok_but_connection_not_active(tmp_path):
    [result], _, _ = api_checks(tmp_path, raw_vpn(status="provisioning"))
    assert result.status == "WARN" and "VPN connection provisioning" in result.detail


def test_token_refused(tmp_path):
    [result], _, _ = api_checks(tmp_path, ApiAuthError("space acme-space vpn office: HTTP 401 (unauthorized: x)", status=401))
    assert result.status == "FAIL"
    assert result.fix.startswith("heroku authorizations:create -d 'vpn gateway agent'")


def test_an_answer_without_psks_points_at_the_token_scope(tmp_path):
    error = ApiPayloadError("space acme-space vpn office: invalid vpn-connection: tunnels[0].pre_shared_key: missing")
    [result], _, _ = api_checks(tmp_path, error)
    assert result.status == "FAIL" and "holds no PSKs" in result.detail
    assert result.fix.endswith("heroku authorizations:create -d 'vpn gateway agent' -s read-protected")


def test_vpn_not_found(tmp_path):
    [result], _, _ = api_checks(tmp_path, ApiNotFound("space acme-space vpn office: HTTP 404 (not_found: x)"))
    assert result.status == "FAIL" and "spaces:vpn:info" in result.fix


def test_api_unreachable_with_and_without_cache(tmp_path):
    error = ApiUnavailable("space acme-space vpn office: cannot reach the API (ConnectError)")
    [without], vpns, _ = api_checks(tmp_path / "a", error)
    assert without.status == "WARN" and "no cache" in without.detail and vpns == {}
    [with_cache], vpns, sources = api_checks(tmp_path / "b", error, cached=raw_vpn())
    assert "the agent would use its cache" in with_cache.detail
    assert sources == {"acme-space-office": "cache"}


def test_no_token_at_all(tmp_path):
    [result], _, _ = api_checks(tmp_path, raw_vpn(), environ={})
    assert result.status == "FAIL" and result.detail.startswith("no Platform API token found")


def test_static_only_needs_no_token(tmp_path):
    config = AgentConfig(connections=(STATIC,), state_dir=str(tmp_path))

    def no_loader(*args):
        raise CredentialError("must not be asked")
    found, vpns, sources = report._check_api(config, {}, no_loader, None, ConnectionCache(tmp_path))
    assert found == [Check("token", "OK", "no Heroku connections: no token needed")]
    assert sources == {"static-datacenter": "static config"}


# -- 8. CIDR rules -----------------------------------------------------------------------

def test_cidrs_ok():
    result = dc.check_cidrs(HEROKU, vpn(), "API", lambda ip: None)
    assert result == Check("cidrs", "OK", "acme-space/office (API): 172.16.0.0/16 <-> 10.0.0.0/16; "
                                          "local address 35.161.69.30")


@pytest.mark.parametrize("routable, words", [
    (("100.64.0.0/16",), "100.64.0.0/16 is not RFC 1918"),
    (("10.0.128.0/17",), "10.0.128.0/17 overlaps the space CIDR 10.0.0.0/16"),
])
def test_cidrs_break_the_article(routable, words):
    result = dc.check_cidrs(HEROKU, raw_vpn_connection(routable), "cache", lambda ip: None)
    assert result.status == "FAIL" and words in result.detail


def test_cidrs_reserved_space_ranges_warn_for_heroku_only():
    reserved = raw_vpn_connection(("172.17.0.0/16",))
    assert "default dyno CIDR" in dc.check_cidrs(HEROKU, reserved, "API", lambda ip: None).detail
    static = StaticConfig(1, ("172.17.0.0/16",), "10.0.0.0/16", STATIC.static.tunnels)
    assert dc.check_cidrs(ConnectionConfig("s", "v", local_address="1.2.3.4", static=static), reserved,
                          "static config", lambda ip: None).status == "OK"


def test_local_address_detected_or_missing():
    auto = ConnectionConfig("acme-space", "office")
    assert "local address 35.161.69.30" in dc.check_cidrs(auto, vpn(), "API", lambda ip: "35.161.69.30").detail
    missing = dc.check_cidrs(auto, vpn(), "API", lambda ip: None)
    assert missing.status == "FAIL" and "no route to tunnel 1 (52.44.146.197)" in missing.detail


def test_local_address_behind_nat_warns():
    result = dc.check_cidrs(ConnectionConfig("acme-space", "office"), vpn(), "API", lambda ip: "192.168.1.5")
    assert result.status == "WARN" and "set local_id: 35.161.69.30" in result.detail


def test_cidrs_without_any_answer():
    assert dc.check_cidrs(HEROKU, None, "", lambda ip: None).status == "WARN"


TWO_CIDRS = ["172.16.0.0/16", "192.168.50.0/24"]


@pytest.mark.parametrize("mode, fix", [
    (Mode.ROUTE, "or set traffic_selectors: wide"),
    (Mode.POLICY, "or in route mode (a kernel with XFRM interfaces), traffic_selectors: wide"),
])
def test_selectors_fail_for_ikev1_with_two_cidrs_and_name_the_fixes(mode, fix):
    result = dc.check_selectors(HEROKU, mode, vpn(routable_cidrs=TWO_CIDRS), "API")
    assert result.status == "FAIL"
    assert result.detail == ("acme-space/office (API): IKEv1 negotiates only the first traffic selector: of the "
                             "routable CIDRs only 172.16.0.0/16 would cross the tunnel, not 192.168.50.0/24; "
                             "the agent does not load it")
    assert result.fix.startswith("switch the VPN to IKEv2") and "summarises" in result.fix and fix in result.fix


def test_selectors_ok_with_ikev2_or_wide_selectors_in_route_mode_or_one_cidr():
    assert dc.check_selectors(HEROKU, Mode.POLICY, vpn(routable_cidrs=TWO_CIDRS, ike_version=2), "API") == Check(
        "selectors", "OK", "acme-space/office (API): IKEv2: one CHILD_SA carries all 2 routable CIDRs")
    wide = replace(HEROKU, mode=Mode.ROUTE, traffic_selectors=TrafficSelectors.WIDE)
    assert dc.check_selectors(wide, Mode.ROUTE, vpn(routable_cidrs=TWO_CIDRS), "cache") == Check(
        "selectors", "OK", "acme-space/office (cache): wide selectors (0.0.0.0/0) bound to the tunnel interfaces; "
                           "the routes send 10.0.0.0/16 into the tunnel")
    assert dc.check_selectors(HEROKU, Mode.POLICY, vpn(), "API").status == "OK"


def test_wide_selectors_under_auto_fail_where_policy_mode_runs(tmp_path):
    auto_wide = replace(HEROKU, traffic_selectors=TrafficSelectors.WIDE)
    config = AgentConfig(connections=(auto_wide,), state_dir=str(tmp_path))
    answers = {("acme-space", "office"): raw_vpn(routable_cidrs=TWO_CIDRS)}
    probes = fakes(api_factory=lambda url, token: FakeApi(answers))
    by_route = {r: [c for c in report.run_checks(config, cache=ConnectionCache(tmp_path),
                                                 **(probes | {"route_support": lambda: r}))
                    if c.name == "selectors"] for r in (None, "no XFRM interfaces")}
    assert [c.status for c in by_route[None]] == ["OK"]
    assert [c.status for c in by_route["no XFRM interfaces"]] == ["FAIL"]


# -- run_checks, render, JSON, exit codes ------------------------------------------------

def test_run_checks_on_a_healthy_host(tmp_path):
    config = AgentConfig(connections=(HEROKU, STATIC), state_dir=str(tmp_path))
    found = report.run_checks(config, cache=ConnectionCache(tmp_path), **fakes())
    assert [c.name for c in found] == ["charon", "plugins", "route mode", "firewall", "rp_filter",
                                       "mss", "mss", "token", "cidrs", "selectors", "cidrs", "selectors"]
    assert {c.status for c in found} == {"OK"}, [c for c in found if c.status != "OK"]


def test_run_checks_firewall_fix_names_every_tunnel_ip(tmp_path):
    config = AgentConfig(connections=(HEROKU, STATIC), state_dir=str(tmp_path))
    found = report.run_checks(config, cache=ConnectionCache(tmp_path),
                              **fakes(run=lambda argv: (0, nft_doc(chain()), "")))
    [fw] = [c for c in found if c.name == "firewall"]
    assert fw.fix.endswith("198.51.100.1, 198.51.100.2, 52.44.146.197, 52.44.146.198")


def test_run_checks_when_nft_is_missing(tmp_path):
    def no_nft(argv):
        raise FileNotFoundError(2, "No such file or directory")
    found = report.run_checks(AgentConfig(connections=(STATIC,)), **fakes(run=no_nft))
    [fw] = [c for c in found if c.name == "firewall"]
    assert fw.status == "WARN" and fw.detail == "cannot inspect: nft not usable (No such file or directory)"


def test_render_is_an_aligned_table_with_fixes():
    text = report.render([
        Check("charon", "OK", "strongSwan 5.9.8, VICI at /var/run/charon.vici"),
        Check("rp_filter", "WARN", "all=1 default=1: strict", "sysctl -w net.ipv4.conf.all.rp_filter=2"),
        Check("token", "FAIL", "acme-space/office: token refused", "heroku authorizations:create -d 'vpn gateway agent'"),
    ])
    assert text == (
        "OK    charon     strongSwan 5.9.8, VICI at /var/run/charon.vici\n"
        "WARN  rp_filter  all=1 default=1: strict\n"
        "                 fix: sysctl -w net.ipv4.conf.all.rp_filter=2\n"
        "FAIL  token      acme-space/office: token refused\n"
        "                 fix: heroku authorizations:create -d 'vpn gateway agent'\n"
        "doctor: FAIL (1 OK, 1 WARN, 1 FAIL)\n"
    )


def test_to_json():
    document = json.loads(report.to_json([Check("charon", "OK", "fine"), Check("mss", "WARN", "off", "set it")]))
    assert document == {"status": "WARN", "checks": [
        {"name": "charon", "status": "OK", "detail": "fine", "fix": ""},
        {"name": "mss", "status": "WARN", "detail": "off", "fix": "set it"}]}


def write_config(tmp_path, body: str) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize("overrides, code", [
    ({}, 0),
    ({"read_file": lambda path: "1"}, 1),
    ({"charon": lambda path: CharonFacts(None, None, "cannot reach charon")}, 2),
])
def test_run_doctor_exit_codes(tmp_path, overrides, code):
    config = write_config(tmp_path, f"state_dir: {tmp_path}\nconnections:\n"
                                    "  - {space: acme-space, vpn: office, local_address: 35.161.69.30}\n")
    out = []
    assert report.run_doctor(config, print_=lambda text, end: out.append(text), **fakes(**overrides)) == code
    assert out[0].startswith(f"OK    config")


def test_run_doctor_reports_a_bad_config_as_fail(tmp_path):
    out = []
    code = report.run_doctor(write_config(tmp_path, "connections: 3\n"), as_json=True,
                             print_=lambda text, end: out.append(text))
    [check] = json.loads(out[0])["checks"]
    assert code == 2 and check["name"] == "config" and check["status"] == "FAIL"
    assert check["fix"].startswith("space-vpn-agent check-config --config ")


def test_the_token_never_reaches_the_output(tmp_path, monkeypatch):
    """A 401 whose body echoes the request, through the real adapter and token loader."""
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"id": "unauthorized", "message": request.headers["Authorization"]})

    def api(url, token):
        return PlatformApi(url, token, timeout=5.0, attempts=1, transport=httpx.MockTransport(echo))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    config = write_config(tmp_path, f"state_dir: {tmp_path}\napi: {{token_file: {tmp_path / 'token'}}}\n"
                                    "connections:\n  - {space: acme-space, vpn: office}\n")
    for as_json in (False, True):
        out = []
        code = report.run_doctor(config, as_json=as_json, print_=lambda text, end: out.append(text),
                                 **fakes(api_factory=api, environ={}))
        assert code == 2
        assert "token refused" in out[0] and "<redacted>" in out[0]
        assert TOKEN not in out[0] and "doctor-test-token" not in out[0]


# -- the command lines -------------------------------------------------------------------

def test_space_vpn_agent_doctor_subcommand(tmp_path, capsys):
    assert daemon_main.main(["doctor", "--config", str(tmp_path / "absent.yaml"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["checks"][0]["name"] == "config"


def test_agentctl_doctor_runs_in_process(tmp_path, capsys):
    assert agentctl.main(["doctor", "--config", str(tmp_path / "absent.yaml"), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["checks"][0]["name"] == "config"


def test_agentctl_doctor_defaults(monkeypatch):
    seen = []
    monkeypatch.setattr(agentctl, "_doctor", lambda path, as_json: seen.append((path, as_json)) or 2)
    assert agentctl.main(["doctor"]) == 2
    assert seen == [("/etc/space-vpn-agent/agent.yaml", False)]


def test_agentctl_doctor_end_to_end_with_a_missing_config(tmp_path):
    done = subprocess.run([sys.executable, "-m", "agent.cli.agentctl", "doctor", "--config", str(tmp_path / "no.yaml")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2
    assert done.stdout.startswith("FAIL  config  ") and "fix: space-vpn-agent check-config" in done.stdout


# -- an HA pair ----------------------------------------------------------------------------

VIP = "35.161.69.30"
IP_ADDR = json.dumps([{"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}]},
                      {"ifname": "eth0", "addr_info": [{"local": "203.0.113.11"}, {"local": VIP}]}])


def ha_run(arping_rc: int = 0, keepalived: bool = True, vip_here: bool = True):
    seen: list[list[str]] = []

    def run(argv):
        seen.append(argv)
        if argv[0] == "nft":
            return 0, nft_doc(chain(policy="accept")), ""
        if argv[0] == "pgrep":
            return (0, "812\n", "") if keepalived else (1, "", "")
        if argv[:2] == ["ip", "-j"]:
            return 0, IP_ADDR if vip_here else IP_ADDR.replace(VIP, "203.0.113.99"), ""
        if argv[0] == "arping":
            reply = "Unicast reply from 35.161.69.30 [52:54:00:12:34:56]  0.6ms\n" if arping_rc else ""
            return arping_rc, reply, ""
        raise OSError(2, "No such file or directory")

    run.seen = seen
    return run


YIELD_FILE = "/proc/self/ha-yield"  # a folder that exists everywhere; nothing is written by the doctor
KEEPALIVED_CONF = f'track_file agent_yield {{\n  file "{YIELD_FILE}"\n  weight 0\n}}\n'


def ha_checks(run, yield_file: str = YIELD_FILE, keepalived_conf: str | None = KEEPALIVED_CONF, **config):
    conn = ConnectionConfig(space="acme-space", vpn="office", local_address=VIP, mode=Mode.ROUTE)
    from agent.config import HaConfig

    def read_file(path: str) -> str:
        if path == "/etc/keepalived/keepalived.conf":
            if keepalived_conf is None:
                raise PermissionError(13, "Permission denied")
            return keepalived_conf
        return "2\n"

    cfg = AgentConfig(connections=(conn,), ha=HaConfig(enabled=True, yield_file=yield_file), **config)
    return {c.name: c for c in report.run_checks(cfg, **fakes(run=run, read_file=read_file))
            if c.name.startswith("ha_")}


def test_ha_master_with_keepalived_and_no_other_holder_is_ok():
    run = ha_run()
    found = ha_checks(run)
    assert [c.status for c in found.values()] == ["OK", "OK", "OK", "OK"]
    assert found["ha_yield_file"].detail == f"keepalived tracks {YIELD_FILE} (the split-brain guard)"
    assert found["ha_vip"].detail == f"acme-space/office: {VIP} on eth0: master, and no other node answers for it"
    assert ["arping", "-D", "-c", "2", "-w", "3", "-I", "eth0", VIP] in run.seen


def test_ha_split_brain_keepalived_down_and_a_backup():
    found = ha_checks(ha_run(arping_rc=1))
    assert found["ha_vip"].status == "FAIL" and "52:54:00:12:34:56 answers for it too: split brain" in \
        found["ha_vip"].detail
    assert ha_checks(ha_run(keepalived=False))["ha_keepalived"].status == "FAIL"
    backup = ha_checks(ha_run(vip_here=False))["ha_vip"]
    assert backup.status == "OK" and "not on this node: a backup" in backup.detail


def test_ha_metrics_on_the_virtual_address_need_nonlocal_bind():
    from agent.config import MetricsConfig

    found = ha_checks(ha_run(), metrics=MetricsConfig(listen=f"{VIP}:19813"))
    assert found["ha_nonlocal_bind"].status == "FAIL"  # the fake /proc answers 2
    assert "ip_nonlocal_bind=1" in found["ha_nonlocal_bind"].fix


@pytest.mark.parametrize("yield_file, keepalived_conf, status, words", [
    ("/nonexistent-dir/ha-yield", KEEPALIVED_CONF, "FAIL", "install -d -m 0700 /nonexistent-dir"),
    (YIELD_FILE, "vrrp_instance WAN {}\n", "WARN", "track_file"),
    (YIELD_FILE, None, "WARN", "not checked"),
    ("", KEEPALIVED_CONF, "WARN", "ha.yield_file is empty"),
])
def test_ha_yield_file_must_be_tracked_by_keepalived(yield_file, keepalived_conf, status, words):
    check = ha_checks(ha_run(), yield_file=yield_file, keepalived_conf=keepalived_conf)["ha_yield_file"]
    assert check.status == status and words in f"{check.detail} {check.fix}"


def test_without_ha_there_is_no_ha_check():
    conn = ConnectionConfig(space="acme-space", vpn="office", local_address=VIP)
    found = report.run_checks(AgentConfig(connections=(conn,)), **fakes(run=ha_run()))
    assert not [c for c in found if c.name.startswith("ha_")]
