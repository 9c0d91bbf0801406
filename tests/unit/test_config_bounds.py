"""The config held to the same bounds as an API answer: each duration within its
minimum and maximum, static tunnels by AWS's rules (core/bounds), names length-capped;
each case one row with the exact message, a PSK never shown; check-config refuses them
all; and any YAML-like document gives an AgentConfig or a ConfigError, nothing else."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.config import ConfigError, parse_config
from agent.config.validation import DURATION_BOUNDS
from agent.core.durations import format_duration
from tests.unit.test_config import PSK1, PSK2, heroku, minimal, problems_of, static_config

REPO = Path(__file__).resolve().parents[2]
S = "connections[0].static"

DURATIONS = [
    # (section, key, too short, its message, too long, its message)
    ("api", "poll_interval", "0.0001s", "api.poll_interval: 0.0001s is below the minimum 1s",
     "99999999999s", "api.poll_interval: 99999999999s is above the maximum 1h"),
    ("api", "timeout", "100ms", "api.timeout: 100ms is below the minimum 1s",
     "1h", "api.timeout: 1h is above the maximum 2m"),
    ("api", "not_found_grace", "0s", "api.not_found_grace: 0s is below the minimum 1s",
     "25h", "api.not_found_grace: 25h is above the maximum 24h"),
    ("api", "forget_deleted_after", "10ms", "api.forget_deleted_after: 10ms is below the minimum 1s",
     "200h", "api.forget_deleted_after: 200h is above the maximum 168h"),
    ("strongswan", "connect_timeout", "500ms", "strongswan.connect_timeout: 500ms is below the minimum 1s",
     "10m", "strongswan.connect_timeout: 10m is above the maximum 5m"),
]
CONNECTION_DURATIONS = [
    ("probe.interval", {"probe": {"target": "10.0.0.5", "interval": "1ms"}},
     "connections[0].probe.interval: 1ms is below the minimum 50ms"),
    ("probe.interval-long", {"probe": {"target": "10.0.0.5", "interval": "61s"}},
     "connections[0].probe.interval: 61s is above the maximum 1m"),
    ("probe.interval-number", {"probe": {"target": "10.0.0.5", "interval": 0.01}},
     "connections[0].probe.interval: 10ms is below the minimum 50ms"),
    ("resolve_interval", {"probe": {"target": "app.internal", "resolve_interval": "2h"}},
     "connections[0].probe.resolve_interval: 2h is above the maximum 1h"),
    ("failback_hold_down", {"failback_hold_down": "10ms"},
     "connections[0].failback_hold_down: 10ms is below the minimum 1s"),
    ("failback_hold_down-long", {"failback_hold_down": "48h"},
     "connections[0].failback_hold_down: 48h is above the maximum 24h"),
]


@pytest.mark.parametrize("section, key, short, short_message, long, long_message", DURATIONS,
                         ids=[f"{d[0]}.{d[1]}" for d in DURATIONS])
def test_each_global_duration_has_a_minimum_and_a_maximum(section, key, short, short_message, long, long_message):
    assert problems_of(minimal(**{section: {key: short}})) == [short_message]
    assert problems_of(minimal(**{section: {key: long}})) == [long_message]
    low, high = DURATION_BOUNDS[f"{section}.{key}"]
    config = parse_config(minimal(**{section: {key: low}}), base_dir=REPO)
    assert getattr(getattr(config, section), key) == low
    assert getattr(getattr(parse_config(minimal(**{section: {key: high}}), base_dir=REPO), section), key) == high


@pytest.mark.parametrize("extra, expected", [c[1:] for c in CONNECTION_DURATIONS], ids=[c[0] for c in CONNECTION_DURATIONS])
def test_each_connection_duration_has_a_minimum_and_a_maximum(extra, expected):
    assert problems_of({"connections": [heroku(**extra)]}) == [expected]


def test_the_edges_of_the_probe_interval_are_allowed():
    for interval, seconds in (("50ms", 0.05), ("60s", 60.0)):
        config = parse_config({"connections": [heroku(probe={"target": "10.0.0.5", "interval": interval})]},
                              base_dir=REPO)
        assert config.connections[0].probe.interval == seconds


def test_the_example_config_states_every_bound():
    lines = (REPO / "config" / "agent.example.yaml").read_text().splitlines()
    for path, (low, high) in DURATION_BOUNDS.items():
        key = path.rpartition(".")[2]
        at = next(i for i, line in enumerate(lines) if line.strip().lstrip("# ").startswith(f"{key}:"))
        stated = f"Allowed: {format_duration(low)} to {format_duration(high)}."
        assert any(stated in line for line in lines[max(0, at - 8):at]), f"{path}: '{stated}' not above {key}"


def _psk_dir(tmp_path: Path, first: str = PSK1, second: str = PSK2) -> Path:
    for name, key in (("tunnel1.psk", first), ("tunnel2.psk", second)):
        (tmp_path / name).write_text(key)
        (tmp_path / name).chmod(0o600)
    return tmp_path


STATIC_REFUSED = [
    ("tunnel-ip-loopback", {"tunnels": [{"ip": "127.0.0.1", "psk_file": "tunnel1.psk"},
                                        {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]},
     f"{S}.tunnels[0].ip: 127.0.0.1 is a loopback address, not a tunnel endpoint's public address"),
    ("tunnel-ip-rfc1918", {"tunnels": [{"ip": "198.51.100.1", "psk_file": "tunnel1.psk"},
                                       {"ip": "192.168.1.1", "psk_file": "tunnel2.psk"}]},
     f"{S}.tunnels[1].ip: 192.168.1.1 is a private (RFC 1918) address, not a tunnel endpoint's public address"),
    ("tunnel-ip-multicast", {"tunnels": [{"ip": "239.1.1.1", "psk_file": "tunnel1.psk"},
                                         {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]},
     f"{S}.tunnels[0].ip: 239.1.1.1 is a multicast address, not a tunnel endpoint's public address"),
    ("tunnel-ip-v6", {"tunnels": [{"ip": "2001:db8::1", "psk_file": "tunnel1.psk"},
                                  {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]},
     f"{S}.tunnels[0].ip: 2001:db8::1 is not an IPv4 address (AWS tunnel endpoints are IPv4)"),
    ("space-half-internet", {"space_cidr_block": "0.0.0.0/1"},
     f"{S}.space_cidr_block: 0.0.0.0/1 is not inside RFC 1918 (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"),
    ("space-v6", {"space_cidr_block": "::/0"},
     f"{S}.space_cidr_block: ::/0 is not an IPv4 network (a Private Space VPN routes IPv4 only)"),
    ("routable-too-many", {"routable_cidrs": [f"192.168.{i}.0/24" for i in range(40)]},
     f"{S}.routable_cidrs: 40 entries, more than the 32 allowed"),
]


@pytest.mark.parametrize("static_extra, expected", [c[1:] for c in STATIC_REFUSED], ids=[c[0] for c in STATIC_REFUSED])
def test_static_tunnels_follow_the_api_answers_rules(tmp_path, static_extra, expected):
    assert problems_of(static_config(**static_extra), _psk_dir(tmp_path)) == [expected]


PSKS_REFUSED = [
    ("65", "A" * 65, "must be 8 to 64 characters (AWS's rule), got 65"),
    ("short", "Ab1.x", "must be 8 to 64 characters (AWS's rule), got 5"),
    ("dash", "secret-with-dashes", "may hold only letters, digits, '.' and '_' (AWS's rule)"),
    ("zero", "0secret.key", "must not start with 0 (AWS's rule)"),
]


@pytest.mark.parametrize("key, expected", [c[1:] for c in PSKS_REFUSED], ids=[c[0] for c in PSKS_REFUSED])
def test_static_psks_follow_aws_rule_and_are_never_shown(tmp_path, key, expected):
    base = _psk_dir(tmp_path, second=key)
    problems = problems_of(static_config(), base)
    assert problems == [f"{S}.tunnels[1].psk_file: the key in {base / 'tunnel2.psk'} {expected}"]
    assert key not in "\n".join(problems)


def test_a_huge_psk_file_is_refused_before_it_is_read(tmp_path):
    base = _psk_dir(tmp_path, second="A" * 70_000)
    (problem,) = problems_of(static_config(), base)
    assert problem.startswith(f"{S}.tunnels[1].psk_file: {base / 'tunnel2.psk'} holds 70000 bytes, more than 4096")
    assert "A" * 65 not in problem


@pytest.mark.parametrize("conn_extra, api, expected", [
    ({"local_address": "10.20.0.9"}, None, f"{S}: space_cidr_block 10.20.0.0/16 holds local_address 10.20.0.9"),
    ({}, {"url": "http://127.0.0.1:8080"}, None),
], ids=["local-address-in-space", "loopback-api-is-fine"])
def test_static_cidrs_must_not_swallow_our_own_address(tmp_path, conn_extra, api, expected):
    data = static_config(conn_extra)
    if api:
        data["api"] = api
    if expected is None:
        parse_config(data, base_dir=_psk_dir(tmp_path))
    else:
        assert problems_of(data, _psk_dir(tmp_path)) == [expected]


def test_our_own_address_in_our_own_lan_is_fine(tmp_path):
    """A gateway behind NAT often has its address inside its routable CIDR."""
    parse_config(static_config({"local_address": "192.168.10.1"}), base_dir=_psk_dir(tmp_path))


@pytest.mark.parametrize("key", ["space", "vpn"])
def test_names_are_length_capped(key):
    data = minimal()
    data["connections"][0][key] = "n" * 300
    assert problems_of(data) == [f"connections[0].{key}: 300 characters, more than the 63 allowed"]
    data["connections"][0][key] = "n" * 63
    parse_config(data, base_dir=REPO)


def test_check_config_refuses_what_the_daemon_would_refuse(tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"connections": [heroku(probe={"target": "10.0.0.5", "interval": "1ms"})]}))
    result = subprocess.run([sys.executable, "-m", "agent.daemon.main", "check-config", "--config", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert "connections[0].probe.interval: 1ms is below the minimum 50ms" in result.stderr


# --- any document: an AgentConfig or a ConfigError ----------------------------------------

YAML_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
                | st.text(max_size=40) | st.sampled_from(["1ms", "99999999999s", "0.0001s", "1h30m", "-5s", "nan",
                                                         "0.0.0.0/1", "::/0", "10.0.0.0/16", "198.51.100.1", "ø"]))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=15)
VALID = {
    "api": {"url": "http://127.0.0.1:8080", "poll_interval": "30s", "timeout": "10s", "not_found_grace": "5m",
            "forget_deleted_after": "15m"},
    "strongswan": {"vici_socket": "/run/charon.vici", "connect_timeout": "5s"},
    "metrics": {"listen": "127.0.0.1:19813"},
    "log_level": "info",
    "connections": [
        {"space": "acme", "vpn": "office", "local_address": "203.0.113.10", "mode": "auto",
         "probe": {"target": "10.0.0.5", "port": 443, "interval": "1s", "failures": 3, "resolve_interval": "1m"},
         "tunnel_mtu": 1419, "tcp_mss": 1379, "preferred_tunnel": 1, "failback_hold_down": "1m"},
        {"vpn": "dc", "static": {"ike_version": 2, "routable_cidrs": ["192.168.10.0/24"],
                                 "space_cidr_block": "10.20.0.0/16",
                                 "tunnels": [{"ip": "198.51.100.1", "psk_file": "tunnel1.psk"},
                                             {"ip": "198.51.100.2", "psk_file": "tunnel2.psk"}]}},
    ],
}
PATHS = st.sampled_from([
    ("api",), ("api", "poll_interval"), ("api", "timeout"), ("api", "url"), ("api", "not_found_grace"),
    ("strongswan", "connect_timeout"), ("metrics", "listen"), ("log_level",), ("connections",),
    ("connections", 0), ("connections", 0, "space"), ("connections", 0, "probe"),
    ("connections", 0, "probe", "interval"), ("connections", 0, "probe", "target"), ("connections", 0, "tunnel_mtu"),
    ("connections", 0, "failback_hold_down"), ("connections", 1, "static", "space_cidr_block"),
    ("connections", 1, "static", "routable_cidrs"), ("connections", 1, "static", "tunnels"),
    ("connections", 1, "static", "tunnels", 0, "ip"), ("connections", 1, "static", "tunnels", 1, "psk_file"),
    ("connections", 1, "static", "ike_version"), ("connections", 1, "vpn"), ("state_dir",)])


def _mutated(changes) -> dict:
    data = copy.deepcopy(VALID)
    for path, value in changes:
        target = data
        try:
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change replaced the parent
    return data


def _parses_or_refuses(data: object, base: Path) -> None:
    try:
        config = parse_config(data, base_dir=base)
    except ConfigError as e:
        assert e.problems and PSK1 not in str(e) and PSK2 not in str(e)
        return
    for conn in config.connections:
        assert 0.05 <= conn.probe.interval <= 60 and math.isfinite(conn.failback_hold_down)
    assert 1 <= config.api.poll_interval <= 3600


@pytest.fixture(scope="module")
def psk_base(tmp_path_factory) -> Path:
    return _psk_dir(tmp_path_factory.mktemp("psks"))


def test_the_valid_document_is_valid(psk_base):
    parse_config(copy.deepcopy(VALID), base_dir=psk_base)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(YAML_VALUES)
def test_any_document_gives_a_config_or_a_config_error(psk_base, data):
    _parses_or_refuses(data, psk_base)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(PATHS, YAML_VALUES), min_size=1, max_size=4))
def test_any_mutated_document_gives_a_config_or_a_config_error(psk_base, changes):
    _parses_or_refuses(_mutated(changes), psk_base)


def test_a_duration_too_large_for_milliseconds_is_refused_by_name(psk_base):
    problems = problems_of(_mutated([(("api", "poll_interval"), 1.8e305)]), base_dir=psk_base)
    assert "api.poll_interval: 1.8e+305 is above the maximum 1h" in problems
