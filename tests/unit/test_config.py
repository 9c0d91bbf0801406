"""Config validation: defaults, every problem message word for word, static PSK files,
the example files, and that no secret ever reaches a message or the redacted view."""

import copy
import os
import shutil
from pathlib import Path

import pytest
import yaml

from agent.config import (
    AgentConfig,
    ApiConfig,
    ConfigError,
    ConnectionConfig,
    HaConfig,
    MetricsConfig,
    ProbeConfig,
    StaticTunnelConfig,
    load_config,
    parse_config,
    redacted,
    split_listen,
    static_vpn_connection,
)
from agent.core.model import ConnectionStatus, Secret, TunnelApiStatus
from agent.core.modes import Mode
from agent.core.selectors import TrafficSelectors, selector_problem

REPO = Path(__file__).resolve().parents[2]
PSK1 = "tunnel.one_very_secret_key"
PSK2 = "tunnel.two_very_secret_key"
CONNECTION_KEYS = "space, vpn, local_address, local_id, mode, probe, static, source_address, tunnel_mtu, tcp_mss, preferred_tunnel, failback_hold_down, traffic_selectors"
NO_DIR = Path("/nonexistent-config-dir")


def heroku(**extra):
    return {"space": "acme-space", "vpn": "office", **extra}


def minimal(**top):
    return {"connections": [heroku()], **top}


def static_section(**extra):
    section = {
        "ike_version": 2,
        "routable_cidrs": ["192.168.10.0/24"],
        "space_cidr_block": "10.20.0.0/16",
        "tunnels": [{"ip": "198.51.100.1", "psk_file": "tunnel1.psk"},
                    {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}],
    }
    section.update(extra)
    return section


def static_config(conn_extra=None, **static_extra):
    conn = {"vpn": "datacenter", "static": static_section(**static_extra)}
    conn.update(conn_extra or {})
    return {"connections": [conn]}


@pytest.fixture
def psk_dir(tmp_path):
    for name, key in (("tunnel1.psk", PSK1 + "\n"), ("tunnel2.psk", PSK2)):
        file = tmp_path / name
        file.write_text(key)
        file.chmod(0o600)
    return tmp_path


def problems_of(data, base_dir=NO_DIR):
    with pytest.raises(ConfigError) as err:
        parse_config(data, base_dir=base_dir)
    assert str(err.value) == "\n".join(err.value.problems)
    return err.value.problems


# --- defaults and accepted values ---------------------------------------------------------

def test_defaults():
    config = parse_config(minimal(), base_dir=NO_DIR)
    assert config == AgentConfig(connections=(ConnectionConfig("acme-space", "office"),))
    assert config.api == ApiConfig("https://api.heroku.com", None, 30.0, 10.0)
    assert config.strongswan.vici_socket == "/var/run/charon.vici"
    assert config.strongswan.connect_timeout == 5.0
    assert config.state_dir == "/var/lib/space-vpn-agent"
    assert config.control_socket == "/run/space-vpn-agent/control.sock"
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 19813)
    assert config.log_level == "info"
    conn = config.connections[0]
    assert (conn.local_address, conn.local_id, conn.mode) == (None, None, Mode.AUTO)
    assert conn.probe == ProbeConfig(target=None, port=None, interval=1.0, failures=3, resolve_interval=60.0)
    assert (conn.key, conn.label, conn.static) == ("acme-space-office", "acme-space/office", None)


def test_explicit_values():
    data = {
        "api": {"url": "http://127.0.0.1:8080/", "token_file": "token", "poll_interval": "1m",
                "timeout": 2},
        "strongswan": {"vici_socket": "/tmp/charon.vici", "connect_timeout": "1500ms"},
        "state_dir": "state",
        "control_socket": "/tmp/agent.sock",
        "metrics": {"listen": "[::1]:9100"},
        "log_level": "DEBUG",
        "connections": [heroku(local_address="203.0.113.10", mode="policy",
                               probe={"target": "10.0.0.5", "interval": "250ms", "failures": 5})],
    }
    config = parse_config(data, base_dir=Path("/etc/agent"))
    assert config.api == ApiConfig("http://127.0.0.1:8080", "/etc/agent/token", 60.0, 2.0)
    assert config.strongswan.connect_timeout == 1.5
    assert config.state_dir == "/etc/agent/state"
    assert (config.metrics.host, config.metrics.port) == ("::1", 9100)
    assert config.log_level == "debug"
    conn = config.connections[0]
    assert conn.local_id == "203.0.113.10"  # defaults to local_address
    assert conn.mode is Mode.POLICY
    assert conn.probe == ProbeConfig("10.0.0.5", 0.25, 5)


@pytest.mark.parametrize("url", ["http://127.0.0.1:5000", "http://localhost:1234",
                                 "http://[::1]:80", "https://api.example.com/base"])
def test_api_url_accepted(url):
    assert parse_config(minimal(api={"url": url}), base_dir=NO_DIR).api.url == url


@pytest.mark.parametrize("listen", ["", None])
def test_metrics_disabled(listen):
    metrics = parse_config(minimal(metrics={"listen": listen}), base_dir=NO_DIR).metrics
    assert metrics == MetricsConfig(listen="")
    assert (metrics.enabled, metrics.host, metrics.port) == (False, None, None)


@pytest.mark.parametrize("listen, expected", [
    ("0.0.0.0:19813", ("0.0.0.0", 19813)),
    ("localhost:1", ("localhost", 1)),
    ("[::]:65535", ("::", 65535)),
    ("metrics.example.internal:9100", ("metrics.example.internal", 9100)),
])
def test_split_listen(listen, expected):
    assert split_listen(listen) == expected


def test_local_id_without_local_address_stays_unset():
    conn = parse_config({"connections": [heroku(local_id="gw.example.com")]},
                        base_dir=NO_DIR).connections[0]
    assert (conn.local_address, conn.local_id) == (None, "gw.example.com")


def test_empty_sections_mean_defaults():
    config = parse_config({"api": None, "strongswan": None, "connections": [heroku(probe=None)]},
                          base_dir=NO_DIR)
    assert config == parse_config(minimal(), base_dir=NO_DIR)


# --- every problem, word for word -----------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    ({"connections": [heroku(local_address="abc")]},
     "connections[0].local_address: 'abc' is not an IP address"),
    ({"connections": [heroku(), heroku()]},
     "connections[1]: duplicate of connections[0] (acme-space/office)"),
    ({"connections": [{"space": "a-b", "vpn": "c"}, {"space": "a", "vpn": "b-c"}]},
     "connections[1]: a/b-c and connections[0] (a-b/c) get the same charon name "
     "svpn-a-b-c-t1; rename one"),
    (minimal(api={"url": "http://example.com"}),
     "api.url: plain http is only allowed for loopback hosts, got 'http://example.com'"),
    (minimal(api={"url": "ftp://api.heroku.com"}),
     "api.url: 'ftp://api.heroku.com' is not an https:// URL (e.g. https://api.heroku.com)"),
    (minimal(api={"url": "https://api.heroku.com:99999"}),
     "api.url: 'https://api.heroku.com:99999' is not a URL (e.g. https://api.heroku.com)"),
    (minimal(api={"url": "https://me:hunter2@api.heroku.com"}),
     "api.url: must not contain credentials; use api.token_file"),
    (minimal(api={"poll_interval": "-5s"}),
     "api.poll_interval: '-5s' is not a duration (use e.g. 10s, 500ms, 5m)"),
    (minimal(api={"timeout": "0s"}), "api.timeout: 0s is below the minimum 1s"),
    (minimal(api={"token": "HRKU-x"}),
     "api.token: secrets are not allowed in the config; put it in a file (chmod 600) "
     "and name that file with token_file"),
    (minimal(api={"token_file": ""}), "api.token_file: expected a non-empty string, "
                                      "got an empty string"),
    (minimal(strongswan={"connect_timeout": True}),
     "strongswan.connect_timeout: 'True' is not a duration (use e.g. 10s, 500ms, 5m)"),
    (minimal(state_dir=5), "state_dir: expected a non-empty string, got a number"),
    (minimal(log_level="verbose"),
     "log_level: 'verbose' is not a log level (use debug, info, warning or error)"),
    (minimal(metrics={"listen": "19813"}),
     "metrics.listen: '19813' is not host:port (e.g. 127.0.0.1:19813)"),
    (minimal(metrics={"listen": 19813}),
     "metrics.listen: expected host:port (e.g. 127.0.0.1:19813), got a number"),
    (minimal(metrics={"listen": "::1:19813"}),
     "metrics.listen: '::1:19813': put an IPv6 address in brackets, e.g. [::1]:19813"),
    (minimal(metrics={"listen": ":19813"}),
     "metrics.listen: ':19813' has no host; use 0.0.0.0:19813 for every address"),
    (minimal(metrics={"listen": "[10.0.0.1]:80"}),
     "metrics.listen: '[10.0.0.1]:80': only an IPv6 address goes in brackets"),
    (minimal(metrics={"listen": "bad_host!:80"}),
     "metrics.listen: 'bad_host!:80': 'bad_host!' is not an IP address or host name"),
    (minimal(metrics={"listen": "127.0.0.1:0"}),
     "metrics.listen: '127.0.0.1:0': the port must be a number from 1 to 65535"),
    (minimal(metrics={"listen": "127.0.0.1:65536"}),
     "metrics.listen: '127.0.0.1:65536': the port must be a number from 1 to 65535"),
    (minimal(metrics={"port": 19813}), "metrics.port: unknown key (known: listen)"),
    (minimal(logging="debug"),
     "logging: unknown key (known: api, strongswan, state_dir, control_socket, metrics, "
     "log_level, ha, connections)"),
    (["not", "a", "mapping"],
     "config: expected a mapping with keys api, strongswan, state_dir, control_socket, "
     "metrics, log_level, ha, connections, got a list"),
    ({}, "connections: at least one connection is required"),
    (None, "connections: at least one connection is required"),
    ({"connections": []}, "connections: at least one connection is required"),
    ({"connections": {"space": "acme-space"}},
     "connections: expected a list of connections, got a mapping"),
    ({"connections": ["office"]},
     f"connections[0]: expected a mapping with keys {CONNECTION_KEYS}, got a string"),
    ({"connections": [{}]},
     "connections[0]: needs either space and vpn (Heroku) or static (plain AWS-style VPN)"),
    ({"connections": [{"space": "acme-space"}]},
     "connections[0].vpn: required: the VPN connection's name in the space "
     "(heroku spaces:vpn:connections)"),
    ({"connections": [{"vpn": "office"}]},
     "connections[0].space: required: the Private Space that holds the VPN"),
    ({"connections": [heroku(space="acme space")]},
     "connections[0].space: 'acme space' is not a valid name (letters, digits, '.', '_' and '-')"),
    ({"connections": [heroku(modee="route")]},
     f"connections[0].modee: unknown key (known: {CONNECTION_KEYS})"),
    ({"connections": [heroku(mode="fast")]},
     "connections[0].mode: 'fast' is not a mode (use auto, route or policy)"),
    ({"connections": [heroku(local_id=7)]},
     "connections[0].local_id: expected a non-empty string, got a number"),
    ({"connections": [heroku(probe={"target": "gate way"})]},
     "connections[0].probe.target: 'gate way' is not an IPv4 address or a host name: 'gate way' is not a DNS "
     "label (letters, digits and inner '-', 1-63 characters)"),
    ({"connections": [heroku(probe={"target": 7})]},
     "connections[0].probe.target: expected an IPv4 address or a host name (e.g. 10.0.0.10 or "
     "app.example.internal), got a number"),
    ({"connections": [heroku(probe={"target": "10.0.0"})]},
     "connections[0].probe.target: '10.0.0' is not an IPv4 address or a host name: a name cannot end in a "
     "number; an IPv4 address is four numbers (e.g. 10.0.0.10)"),
    ({"connections": [heroku(probe={"target": "0x0a000001"})]},
     "connections[0].probe.target: '0x0a000001' is not an IPv4 address or a host name: reads as an IPv4 "
     "address in another notation; write it as four numbers (e.g. 10.0.0.10)"),
    ({"connections": [heroku(probe={"target": "fd00::1"})]},
     "connections[0].probe.target: fd00::1 is not a private (RFC 1918) address; probes cross the tunnel to a "
     "host in the space (e.g. 10.0.0.10)"),
    ({"connections": [heroku(probe={"target": "app.internal", "port": "x"})]},
     "connections[0].probe.port: 'x' is not a port number (1-65535); e.g. 443 for an internal-routing app"),
    ({"connections": [heroku(probe={"target": "app.internal", "port": 0})]},
     "connections[0].probe.port: '0' is not a port number (1-65535); e.g. 443 for an internal-routing app"),
    ({"connections": [heroku(probe={"target": "app.internal", "port": 65536})]},
     "connections[0].probe.port: '65536' is not a port number (1-65535); e.g. 443 for an internal-routing app"),
    ({"connections": [heroku(probe={"target": "app.internal", "port": True})]},
     "connections[0].probe.port: 'True' is not a port number (1-65535); e.g. 443 for an internal-routing app"),
    ({"connections": [heroku(probe={"target": "app.internal", "port": 443.0})]},
     "connections[0].probe.port: '443.0' is not a port number (1-65535); e.g. 443 for an internal-routing app"),
    ({"connections": [heroku(probe={"port": 443})]},
     "connections[0].probe.port: needs probe.target, the host to connect to (e.g. the internal-routing app's "
     "host name)"),
    ({"connections": [heroku(probe={"target": "app.internal", "resolve_interval": "500ms"})]},
     "connections[0].probe.resolve_interval: 500ms is below the minimum 1s"),
    ({"connections": [heroku(probe={"target": "app.internal", "resolve_interval": "2h"})]},
     "connections[0].probe.resolve_interval: 2h is above the maximum 1h"),
    ({"connections": [heroku(probe={"target": "app.internal", "resolve_interval": "often"})]},
     "connections[0].probe.resolve_interval: 'often' is not a duration (use e.g. 10s, 500ms, 5m)"),
    ({"connections": [heroku(probe={"interval": 0})]},
     "connections[0].probe.interval: 0s is below the minimum 50ms"),
    ({"connections": [heroku(probe={"failures": 0})]},
     "connections[0].probe.failures: must be a whole number of at least 1, got '0'"),
    ({"connections": [heroku(probe={"failures": True})]},
     "connections[0].probe.failures: must be a whole number of at least 1, got 'True'"),
    ({"connections": [heroku(probe={"failures": 2.5})]},
     "connections[0].probe.failures: must be a whole number of at least 1, got '2.5'"),
    ({"connections": [heroku(probe={"timeout": "1s"})]},
     "connections[0].probe.timeout: unknown key (known: target, port, interval, failures, resolve_interval)"),
])
def test_problem_message(data, expected):
    assert problems_of(data) == [expected]


S = "connections[0].static"


@pytest.mark.parametrize("data, expected", [
    (static_config(ike_version=3), f"{S}.ike_version: must be 1 or 2, got '3'"),
    (static_config(ike_version=True), f"{S}.ike_version: must be 1 or 2, got 'True'"),
    (static_config(ike_version="2"), f"{S}.ike_version: must be 1 or 2, got '2'"),
    (static_config(ike_version=None),
     f"{S}.ike_version: required: 1 or 2, as the VPN's configuration says"),
    (static_config(routable_cidrs=["8.8.8.0/24"]),
     f"{S}.routable_cidrs[0]: 8.8.8.0/24 is not inside RFC 1918 ("
     "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"),
    (static_config(routable_cidrs=["fd00::/64"]),
     f"{S}.routable_cidrs[0]: fd00::/64 is not an IPv4 network (a Private Space VPN routes IPv4 only)"),
    (static_config(routable_cidrs=["10.20.1.0/24"]),
     f"{S}.routable_cidrs[0]: 10.20.1.0/24 overlaps space_cidr_block 10.20.0.0/16"),
    (static_config(routable_cidrs=["172.16.0.0/12", "172.16.5.0/24"]),
     f"{S}.routable_cidrs[1]: 172.16.5.0/24 overlaps routable_cidrs[0] 172.16.0.0/12"),
    (static_config(routable_cidrs=["192.168.10.1/24"]),
     f"{S}.routable_cidrs[0]: '192.168.10.1/24' has host bits set; did you mean 192.168.10.0/24?"),
    (static_config(routable_cidrs=["office-lan"]),
     f"{S}.routable_cidrs[0]: 'office-lan' is not a CIDR block (e.g. 172.16.0.0/16)"),
    (static_config(routable_cidrs=[]),
     f"{S}.routable_cidrs: expected a list of your side's RFC 1918 CIDR blocks, "
     "got an empty list"),
    (static_config(routable_cidrs="192.168.10.0/24"),
     f"{S}.routable_cidrs: expected a list of your side's RFC 1918 CIDR blocks, got a string"),
    (static_config(space_cidr_block=None),
     f"{S}.space_cidr_block: required: a CIDR block such as 10.0.0.0/16"),
    (static_config(remote_cidrs=["10.0.0.0/16"]),
     f"{S}.remote_cidrs: unknown key (known: ike_version, routable_cidrs, space_cidr_block, "
     "tunnels)"),
    (static_config(tunnels=[{"ip": "198.51.100.1", "psk_file": "tunnel1.psk"}]),
     f"{S}.tunnels: expected exactly two tunnels (tunnel 1 and tunnel 2), got 1"),
    (static_config(tunnels=None),
     f"{S}.tunnels: expected exactly two tunnels (tunnel 1 and tunnel 2), got nothing"),
    (static_config(tunnels=[{"ip": "198.51.100.1", "psk_file": "tunnel1.psk"},
                            {"ip": "198.51.100.1", "psk_file": "tunnel2.psk"}]),
     f"{S}.tunnels[1].ip: same as tunnels[0] (198.51.100.1); the two tunnels need distinct IPs"),
    (static_config(tunnels=[{"psk_file": "tunnel1.psk"},
                            {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]),
     f"{S}.tunnels[0].ip: required: the public IP of this tunnel's far end"),
    (static_config(tunnels=[{"ip": "198.51.100.1"},
                            {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]),
     f"{S}.tunnels[0].psk_file: required: a file holding the tunnel's pre-shared key "
     "(chmod 600)"),
    (static_config(tunnels=[{"ip": "198.51.100.1", "psk_file": "tunnel1.psk", "psk": PSK1},
                            {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]),
     f"{S}.tunnels[0].psk: secrets are not allowed in the config; put it in a file "
     "(chmod 600) and name that file with psk_file"),
    (static_config({"vpn": None}),
     "connections[0].vpn: required: a name for this static connection (e.g. office)"),
])
def test_static_problem_message(psk_dir, data, expected):
    problems = problems_of(data, psk_dir)
    assert problems == [expected]
    assert PSK1 not in "\n".join(problems)


@pytest.mark.parametrize("name, content, mode, expected", [
    ("missing.psk", None, None, "{file} does not exist"),
    ("open.psk", PSK1, 0o644, "{file} is readable or writable by group/others (mode 0644); "
                              "run: chmod 600 {file}"),
    ("group.psk", PSK1, 0o640, "{file} is readable or writable by group/others (mode 0640); "
                               "run: chmod 600 {file}"),
    ("others-write.psk", PSK1, 0o602, "{file} is readable or writable by group/others (mode 0602); "
                                      "run: chmod 600 {file}"),
    ("empty.psk", " \n", 0o600, "{file} is empty"),
    ("two-lines.psk", PSK1 + "\n" + PSK2, 0o600,
     "{file} holds more than one line; it must hold only the key"),
    ("binary.psk", b"\xff\xfe" + PSK1.encode(), 0o600, "{file} is not UTF-8 text"),
    ("a-dir", "dir", None, "{file} is not a regular file (a directory); "
                           "it must be a plain file holding only the secret"),
    ("a-fifo", "fifo", 0o600, "{file} is not a regular file (a FIFO); "
                              "it must be a plain file holding only the secret"),
    ("a-link", "link", None, "{file} is a symbolic link; name the file itself (e.g. {target})"),
    ("big.psk", "x" * 5000, 0o600, "{file} holds 5000 bytes, more than 4096; it must hold only the secret"),
])
def test_psk_file_problems(psk_dir, name, content, mode, expected):
    file = psk_dir / name
    target = psk_dir / "tunnel1.psk"
    if content == "dir":
        file.mkdir()
    elif content == "fifo":
        os.mkfifo(file)
    elif content == "link":
        file.symlink_to(target)
    elif isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        file.write_text(content)
    if mode is not None:
        file.chmod(mode)
    data = static_config(tunnels=[{"ip": "198.51.100.1", "psk_file": name},
                                  {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}])
    problems = problems_of(data, psk_dir)
    assert problems == [f"{S}.tunnels[0].psk_file: " + expected.format(file=file, target=target)]
    assert PSK1 not in problems[0] and PSK2 not in problems[0]


def test_several_problems_are_collected_in_order():
    data = {
        "api": {"url": "http://example.com", "poll_interval": "soon"},
        "log_level": "loud",
        "metrics": {"listen": "localhost"},
        "connections": [heroku(modee="route", local_address="abc"), {}, heroku()],
    }
    assert problems_of(data) == [
        "log_level: 'loud' is not a log level (use debug, info, warning or error)",
        "api.url: plain http is only allowed for loopback hosts, got 'http://example.com'",
        "api.poll_interval: 'soon' is not a duration (use e.g. 10s, 500ms, 5m)",
        "metrics.listen: 'localhost' is not host:port (e.g. 127.0.0.1:19813)",
        f"connections[0].modee: unknown key (known: {CONNECTION_KEYS})",
        "connections[0].local_address: 'abc' is not an IP address",
        "connections[1]: needs either space and vpn (Heroku) or static (plain AWS-style VPN)",
        "connections[2]: duplicate of connections[0] (acme-space/office)",
    ]


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_config({}, base_dir=NO_DIR)


# --- static connections -----------------------------------------------------------------------

def test_static_connection(psk_dir):
    config = parse_config(static_config({"local_address": "203.0.113.10"}), base_dir=psk_dir)
    conn = config.connections[0]
    assert (conn.space, conn.vpn, conn.label, conn.key) == (
        "static", "datacenter", "static/datacenter", "static-datacenter")
    assert conn.static.ike_version == 2
    assert conn.static.routable_cidrs == ("192.168.10.0/24",)
    assert conn.static.space_cidr_block == "10.20.0.0/16"
    assert conn.static.tunnels == (
        StaticTunnelConfig("198.51.100.1", Secret(PSK1), str(psk_dir / "tunnel1.psk")),
        StaticTunnelConfig("198.51.100.2", Secret(PSK2), str(psk_dir / "tunnel2.psk")),
    )
    assert PSK1 not in repr(config)


def test_static_connection_with_space_and_absolute_psk_path(psk_dir):
    data = static_config({"space": "lab"}, tunnels=[
        {"ip": "198.51.100.1", "psk_file": str(psk_dir / "tunnel1.psk")},
        {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}])
    conn = parse_config(data, base_dir=psk_dir).connections[0]
    assert conn.label == "lab/datacenter"
    assert conn.static.tunnels[0].psk == Secret(PSK1)


def test_static_and_heroku_with_same_name_are_duplicates(psk_dir):
    data = static_config({"space": "acme-space", "vpn": "office"})
    data["connections"].insert(0, heroku())
    assert problems_of(data, psk_dir) == [
        "connections[1]: duplicate of connections[0] (acme-space/office)"]


def test_static_vpn_connection(psk_dir):
    conn = parse_config(static_config({"local_address": "203.0.113.10"}),
                        base_dir=psk_dir).connections[0]
    vpn = static_vpn_connection(conn)
    assert (vpn.id, vpn.name, vpn.public_ip, vpn.status) == (
        "static", "datacenter", "203.0.113.10", ConnectionStatus.ACTIVE)
    assert vpn.routable_cidrs == ("192.168.10.0/24",)
    assert (vpn.space_cidr_block, vpn.ike_version) == ("10.20.0.0/16", 2)
    assert [(t.number, t.ip, t.psk, t.status) for t in vpn.tunnels] == [
        (1, "198.51.100.1", Secret(PSK1), TunnelApiStatus.UNKNOWN),
        (2, "198.51.100.2", Secret(PSK2), TunnelApiStatus.UNKNOWN),
    ]


def test_static_vpn_connection_without_local_address(psk_dir):
    conn = parse_config(static_config(), base_dir=psk_dir).connections[0]
    assert static_vpn_connection(conn).public_ip == "0.0.0.0"


def test_static_vpn_connection_refuses_heroku_connection():
    with pytest.raises(ValueError, match="acme-space/office is not a static connection"):
        static_vpn_connection(ConnectionConfig("acme-space", "office"))


# --- redacted view ------------------------------------------------------------------------------

def test_redacted_hides_secrets_and_round_trips(psk_dir):
    data = static_config({"local_address": "203.0.113.10"})
    data["connections"].append(heroku(probe={"target": "10.0.0.5", "interval": "1.5s"}))
    data["api"] = {"token_file": "token", "poll_interval": 90}
    config = parse_config(data, base_dir=psk_dir)
    view = redacted(config)
    text = yaml.safe_dump(view)
    assert PSK1 not in text and PSK2 not in text
    assert view["api"]["poll_interval"] == "1m30s"
    assert view["connections"][1]["probe"]["interval"] == "1.5s"
    assert view["connections"][0]["static"]["tunnels"][0]["psk_file"] == str(
        psk_dir / "tunnel1.psk")
    assert "static" not in view["connections"][1]
    assert parse_config(yaml.safe_load(text), base_dir=NO_DIR) == config


# --- files ----------------------------------------------------------------------------------

def test_example_config_parses():
    config = load_config(REPO / "config" / "agent.example.yaml")
    conn = config.connections[0]
    assert conn.label == "acme-space/office"
    assert conn.static is None
    assert parse_config(redacted(config), base_dir=NO_DIR) == config


def test_static_example_config_parses(psk_dir):
    shutil.copy(REPO / "config" / "agent.static.example.yaml", psk_dir / "agent.yaml")
    config = load_config(psk_dir / "agent.yaml")
    conn = config.connections[0]
    assert (conn.label, conn.mode, conn.probe.interval) == ("static/datacenter", Mode.POLICY, 0.5)
    assert conn.static.tunnels[1].psk == Secret(PSK2)


def test_commented_static_connection_in_example_parses(psk_dir):
    """Uncommenting the static sample in agent.example.yaml must give a valid config."""
    lines = (REPO / "config" / "agent.example.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # - vpn:"))
    uncommented = lines[:start] + [line.replace("  # ", "  ", 1) for line in lines[start:]]
    text = "\n".join(uncommented).replace("/etc/space-vpn-agent/datacenter-tunnel", str(psk_dir)
                                          + "/tunnel")
    config = parse_config(yaml.safe_load(text), base_dir=psk_dir)
    assert [c.label for c in config.connections] == ["acme-space/office", "static/datacenter"]


def test_load_config_resolves_paths_against_its_folder(psk_dir):
    (psk_dir / "agent.yaml").write_text(yaml.safe_dump(static_config()))
    cwd = os.getcwd()
    os.chdir("/")
    try:
        config = load_config(psk_dir / "agent.yaml")
    finally:
        os.chdir(cwd)
    assert config.connections[0].static.tunnels[0].psk_file == str(psk_dir / "tunnel1.psk")


@pytest.mark.parametrize("text, expected", [
    ("connections:\n  - space: a\n    vpn: [b\n", "{file}:4: YAML syntax error: "
                                                   "expected ',' or ']', but got '<stream end>'"),
    ("connections:\n  - space: a\n    vpn: b\n    mode: route\n    mode: policy\n",
     "{file}:5: YAML syntax error: duplicate key 'mode'"),
    ("", "connections: at least one connection is required"),
    ("api:\n  url: !!python/object/apply:os.system [true]\n",
     "{file}:2: YAML syntax error: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_load_config_problems(tmp_path, text, expected):
    file = tmp_path / "agent.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(file)
    assert err.value.problems == [expected.format(file=file)]


def test_load_config_accepts_merge_key_overrides(tmp_path):
    file = tmp_path / "agent.yaml"
    file.write_text(
        "connections:\n"
        "  - &first {space: acme-space, vpn: office, mode: route}\n"
        "  - <<: *first\n"
        "    vpn: warehouse\n")
    config = load_config(file)
    assert [(c.label, c.mode) for c in config.connections] == [
        ("acme-space/office", Mode.ROUTE), ("acme-space/warehouse", Mode.ROUTE)]


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml")
    assert err.value.problems == [
        f"{tmp_path / 'nope.yaml'}: cannot read config: No such file or directory"]


def test_problems_do_not_mutate_input():
    data = {"connections": [heroku(local_address="abc")]}
    before = copy.deepcopy(data)
    problems_of(data)
    assert data == before


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"tunnel_mtu": 100}, "connections[0].tunnel_mtu: must be a whole number from 576 to 9000, got '100'"),
        ({"tcp_mss": "big"}, "connections[0].tcp_mss: must be a whole number from 0 to 8960, got 'big'"),
        ({"source_address": "lan"}, "connections[0].source_address: 'lan' is not an IP address"),
    ],
)
def test_route_mode_keys_are_validated(tmp_path, extra, expected):
    data = {"connections": [{"space": "acme-space", "vpn": "office", **extra}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, base_dir=tmp_path)
    assert err.value.problems == [expected]


def test_route_mode_defaults_follow_the_aws_figures(tmp_path):
    conn = parse_config({"connections": [{"space": "a", "vpn": "b"}]}, base_dir=tmp_path).connections[0]
    assert (conn.tunnel_mtu, conn.tcp_mss, conn.source_address) == (1419, 1379, None)


def test_probe_target_must_be_private(tmp_path):
    data = {"connections": [{"space": "a", "vpn": "b", "probe": {"target": "192.0.2.1"}}]}
    with pytest.raises(ConfigError) as err:
        parse_config(data, base_dir=tmp_path)
    assert err.value.problems == ["connections[0].probe.target: 192.0.2.1 is not a private (RFC 1918) address; probes "
                                  "cross the tunnel to a host in the space (e.g. 10.0.0.10)"]


# --- probe: TCP and host names ---------------------------------------------------------------

@pytest.mark.parametrize("probe, expected", [
    ({"target": "app.acme.internal", "port": 443},
     ProbeConfig("app.acme.internal", 1.0, 3, port=443, resolve_interval=60.0)),
    ({"target": "10.0.0.20", "port": 1, "resolve_interval": "1s"},
     ProbeConfig("10.0.0.20", 1.0, 3, port=1, resolve_interval=1.0)),
    ({"target": "My-App.herokuapp.com.", "port": 65535, "resolve_interval": "1h"},
     ProbeConfig("My-App.herokuapp.com.", 1.0, 3, port=65535, resolve_interval=3600.0)),
    ({"target": " localhost-like ", "interval": "200ms"}, ProbeConfig("localhost-like", 0.2, 3)),
    ({"target": "10.0.0.10"}, ProbeConfig("10.0.0.10", 1.0, 3, port=None)),
])
def test_probe_targets_and_ports(probe, expected):
    config = parse_config({"connections": [heroku(probe=probe)]}, base_dir=NO_DIR)
    assert config.connections[0].probe == expected
    assert parse_config(redacted(config), base_dir=NO_DIR) == config


def test_tcp_probe_in_the_redacted_view():
    config = parse_config({"connections": [heroku(probe={"target": "app.acme.internal", "port": 443,
                                                          "resolve_interval": "90s"})]}, base_dir=NO_DIR)
    assert redacted(config)["connections"][0]["probe"] == {
        "target": "app.acme.internal", "port": 443, "interval": "1s", "failures": 3, "resolve_interval": "1m30s"}


def test_example_config_recommends_a_tcp_probe():
    probe = load_config(REPO / "config" / "agent.example.yaml").connections[0].probe
    assert probe.port is not None and probe.target is not None


def test_traffic_selectors_default_to_the_cidrs(tmp_path):
    conn = parse_config({"connections": [heroku()]}, base_dir=tmp_path).connections[0]
    assert conn.traffic_selectors is TrafficSelectors.CIDRS
    wide = parse_config({"connections": [heroku(mode="route", traffic_selectors="wide")]},
                        base_dir=tmp_path).connections[0]
    assert wide.traffic_selectors is TrafficSelectors.WIDE
    assert redacted(AgentConfig(connections=(wide,)))["connections"][0]["traffic_selectors"] == "wide"


@pytest.mark.parametrize(("extra", "expected"), [
    ({"mode": "policy", "traffic_selectors": "wide"},
     "connections[0].traffic_selectors: wide needs route mode (mode: route or auto); in policy mode 0.0.0.0/0 "
     "selectors would pull all of this host's traffic into the tunnel"),
    ({"traffic_selectors": "any"}, "connections[0].traffic_selectors: 'any' is not a choice (use cidrs or wide)"),
    ({"traffic_selectors": True}, "connections[0].traffic_selectors: 'True' is not a choice (use cidrs or wide)"),
])
def test_traffic_selector_problems(extra, expected):
    assert problems_of({"connections": [heroku(**extra)]}) == [expected]


TWO_CIDRS = ["192.168.10.0/24", "192.168.20.0/24"]


def test_a_static_ikev1_connection_with_two_cidrs_is_refused_with_the_fixes(psk_dir):
    problems = problems_of(static_config(ike_version=1, routable_cidrs=TWO_CIDRS), psk_dir)
    assert problems == [f"{S}.routable_cidrs: " + selector_problem(1, Mode.AUTO, TWO_CIDRS, TrafficSelectors.CIDRS)]
    assert "only 192.168.10.0/24 would cross the tunnel, not 192.168.20.0/24" in problems[0]
    assert "IKEv2" in problems[0] and "set traffic_selectors: wide" in problems[0]


@pytest.mark.parametrize("conn_extra, static_extra", [
    ({}, {"ike_version": 2}),  # one CHILD_SA with both selectors
    ({"mode": "route", "traffic_selectors": "wide"}, {"ike_version": 1}),
    ({"traffic_selectors": "wide"}, {"ike_version": 1}),  # auto: the daemon refuses it if policy mode runs
])
def test_static_connections_that_carry_every_cidr(psk_dir, conn_extra, static_extra):
    config = parse_config(static_config(conn_extra, routable_cidrs=TWO_CIDRS, **static_extra), base_dir=psk_dir)
    assert config.connections[0].static.routable_cidrs == tuple(TWO_CIDRS)


def test_ha_needs_the_virtual_address_of_every_connection():
    assert problems_of(minimal(ha={"enabled": True})) == [
        "connections[0].local_address: required with ha.enabled: the virtual address keepalived moves between "
        "the two gateways (the one Heroku knows)"]
    assert problems_of(minimal(ha={"enabled": "yes"})) == ["ha.enabled: expected true or false, got a string"]
    assert problems_of(minimal(ha={"vip": "203.0.113.10"})) == ["ha.vip: unknown key (known: enabled, yield_file)"]
    config = parse_config({"ha": {"enabled": True}, "connections": [heroku(local_address="203.0.113.10")]},
                          base_dir=NO_DIR)
    assert config.ha.enabled and redacted(config)["ha"] == {"enabled": True, "yield_file": HaConfig.yield_file}
    assert parse_config(redacted(config), base_dir=NO_DIR) == config


def test_ha_yield_file_is_a_path_or_off(tmp_path):
    on = parse_config({"ha": {"enabled": True, "yield_file": "run/yield"},
                       "connections": [heroku(local_address="203.0.113.10")]}, base_dir=tmp_path)
    assert on.ha.yield_file == str(tmp_path / "run/yield")
    off = parse_config({"ha": {"enabled": True, "yield_file": ""},
                        "connections": [heroku(local_address="203.0.113.10")]}, base_dir=tmp_path)
    assert off.ha.yield_file == "" and parse_config(redacted(off), base_dir=tmp_path) == off
    assert problems_of(minimal(ha={"yield_file": 7})) == ["ha.yield_file: expected a non-empty string, got a number"]
