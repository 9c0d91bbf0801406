"""The Platform API answer held to AWS's rules: each hostile or careless value is one row,
refused with the field's path, never with a pre-shared key; the cache loader refuses
the same; any input whatever gives a VpnAnswer or a PayloadError, never another exception."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agent.adapters.connection_cache import ConnectionCache
from agent.core.payload import PayloadError, parse_vpn_answer
from agent.core.snapshot import Health
from tests.unit.test_controller import config_file  # noqa: F401 (a fixture)
from tests.unit.test_payload import GOOD, PSK1, PSK2, _set, good

LONG_PSK = "A" * 70_000

REFUSED = [
    # tunnel endpoints: public unicast IPv4
    ("ip-loopback", _set("tunnels[0].ip", "127.0.0.1"),
     "tunnels[0].ip: 127.0.0.1 is a loopback address, not a tunnel endpoint's public address"),
    ("ip-link-local", _set("tunnels[0].ip", "169.254.169.254"),
     "tunnels[0].ip: 169.254.169.254 is a link-local address"),
    ("ip-multicast", _set("tunnels[1].ip", "224.0.0.5"), "tunnels[1].ip: 224.0.0.5 is a multicast address"),
    ("ip-unspecified", _set("tunnels[0].ip", "0.0.0.0"), "tunnels[0].ip: 0.0.0.0 is the unspecified address"),
    ("ip-broadcast", _set("tunnels[0].ip", "255.255.255.255"),
     "tunnels[0].ip: 255.255.255.255 is the broadcast address"),
    ("ip-reserved", _set("tunnels[0].ip", "240.0.0.1"), "tunnels[0].ip: 240.0.0.1 is a reserved address"),
    ("ip-rfc1918", _set("tunnels[1].ip", "10.0.5.1"), "tunnels[1].ip: 10.0.5.1 is a private (RFC 1918) address"),
    ("ip-rfc1918-172", _set("tunnels[1].ip", "172.31.255.1"), "tunnels[1].ip: 172.31.255.1 is a private (RFC 1918)"),
    ("ip-v6", _set("tunnels[0].ip", "2001:db8::1"), "tunnels[0].ip: 2001:db8::1 is not an IPv4 address"),
    ("ip-empty", _set("tunnels[0].ip", ""), "tunnels[0].ip: must not be empty"),
    ("space-empty", _set("space_cidr_block", " "), "space_cidr_block: must not be empty"),
    ("ip-same", _set("tunnels[1].ip", "198.51.100.1"), "tunnels[1].ip: 198.51.100.1 is the IP of another tunnel"),
    # pre-shared keys: AWS's rule
    ("psk-70000", _set("tunnels[0].pre_shared_key", LONG_PSK),
     "tunnels[0].pre_shared_key: must be 8 to 64 characters (AWS's rule), got 70000"),
    ("psk-short", _set("tunnels[1].pre_shared_key", "Ab1.x"),
     "tunnels[1].pre_shared_key: must be 8 to 64 characters (AWS's rule), got 5"),
    ("psk-65", _set("tunnels[0].pre_shared_key", "A" * 65), "tunnels[0].pre_shared_key: must be 8 to 64 characters"),
    ("psk-dash", _set("tunnels[0].pre_shared_key", "abc-def-ghij"),
     "tunnels[0].pre_shared_key: may hold only letters, digits, '.' and '_' (AWS's rule)"),
    ("psk-newline", _set("tunnels[0].pre_shared_key", "abcdefgh\nWATCHDOG=1"),
     "tunnels[0].pre_shared_key: may hold only letters, digits, '.' and '_'"),
    ("psk-unicode", _set("tunnels[0].pre_shared_key", "abcdéfghij"),
     "tunnels[0].pre_shared_key: may hold only letters, digits, '.' and '_'"),
    ("psk-zero", _set("tunnels[1].pre_shared_key", "0abcdefgh"),
     "tunnels[1].pre_shared_key: must not start with 0 (AWS's rule)"),
    # CIDRs: IPv4 inside RFC 1918, not overlapping
    ("space-half-internet", _set("space_cidr_block", "0.0.0.0/1"),
     "space_cidr_block: 0.0.0.0/1 is not inside RFC 1918 (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"),
    ("space-other-half", _set("space_cidr_block", "128.0.0.0/1"), "space_cidr_block: 128.0.0.0/1 is not inside RFC 1918"),
    ("space-default", _set("space_cidr_block", "0.0.0.0/0"), "space_cidr_block: 0.0.0.0/0 is not inside RFC 1918"),
    ("space-public", _set("space_cidr_block", "8.8.8.0/24"), "space_cidr_block: 8.8.8.0/24 is not inside RFC 1918"),
    ("space-endpoints", _set("space_cidr_block", "198.51.100.0/24"),
     "space_cidr_block: 198.51.100.0/24 is not inside RFC 1918"),
    ("space-v6", _set("space_cidr_block", "::/0"), "space_cidr_block: ::/0 is not an IPv4 network"),
    ("space-wider-than-1918", _set("space_cidr_block", "10.0.0.0/7"), "space_cidr_block: 10.0.0.0/7 is not inside"),
    ("routable-public", _set("routable_cidrs", ["172.16.0.0/16", "8.8.0.0/16"]),
     "routable_cidrs[1]: 8.8.0.0/16 is not inside RFC 1918"),
    ("routable-v6", _set("routable_cidrs", ["::/0"]), "routable_cidrs[0]: ::/0 is not an IPv4 network"),
    ("routable-overlap-space", _set("routable_cidrs", ["10.0.128.0/17"]),
     "routable_cidrs[0]: 10.0.128.0/17 overlaps space_cidr_block 10.0.0.0/16"),
    ("routable-overlap-each-other", _set("routable_cidrs", ["172.16.0.0/16", "172.16.5.0/24"]),
     "routable_cidrs[1]: 172.16.5.0/24 overlaps routable_cidrs[0] 172.16.0.0/16"),
    ("routable-too-many", _set("routable_cidrs", [f"172.16.{i}.0/24" for i in range(33)]),
     "routable_cidrs: 33 entries, more than the 32 allowed"),
    # names and tokens: length-capped, one line
    ("id-long", _set("id", "x" * 300), "id: 300 characters, more than the 128 allowed"),
    ("name-long", _set("name", "n" * 129), "name: 129 characters, more than the 128 allowed"),
    ("name-newline", _set("name", "office\nMAINPID=1"), "name: holds control characters"),
    ("name-escape", _set("name", "office\x1b[2J"), "name: holds control characters"),
    ("tunnel-status-long", _set("tunnels[0].status", "UP" * 40), "tunnels[0].status: 80 characters"),
    ("last-change-long", _set("tunnels[1].last_status_change", "2" * 100),
     "tunnels[1].last_status_change: 100 characters, more than the 64 allowed"),
    ("tunnels-thousands", _set("tunnels", [GOOD["tunnels"][0]] * 5000), "tunnels: expected 2 tunnels, got 5000"),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_each_hostile_value_is_refused_by_its_field(mutate, expected):
    data = good()
    mutate(data)
    with pytest.raises(PayloadError) as info:
        parse_vpn_answer(data)
    message = str(info.value)
    assert any(problem.startswith(expected) for problem in info.value.problems), info.value.problems
    for tunnel in data["tunnels"][:2]:
        assert tunnel["pre_shared_key"] not in message
    assert len(message) < 2000  # a 70 000-character field never floods the log


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_the_cache_loader_refuses_the_same(tmp_path, mutate, expected, caplog):
    """A refused answer is never cached; a cache written by an older agent (or by hand)
    that breaks a rule is not loaded either."""
    data = good()
    mutate(data)
    cache = ConnectionCache(tmp_path)
    cache.path("s", "v").parent.mkdir(parents=True, exist_ok=True)
    cache.path("s", "v").write_text(json.dumps(data))
    assert cache.load("s", "v") is None
    assert expected.partition(":")[0] in caplog.text
    assert PSK1 not in caplog.text and PSK2 not in caplog.text and LONG_PSK not in caplog.text


ALLOWED = [
    ("documentation-192.0.2", _set("tunnels[0].ip", "192.0.2.7")),
    ("documentation-203.0.113", _set("tunnels[1].ip", "203.0.113.200")),
    ("public", _set("tunnels[0].ip", "52.44.146.197")),
    ("psk-8", _set("tunnels[0].pre_shared_key", "Abcdefg8")),
    ("psk-64", _set("tunnels[0].pre_shared_key", "a." + "_" * 61 + "9")),
    ("space-192.168", _set("space_cidr_block", "192.168.0.0/16")),
    ("routable-three", _set("routable_cidrs", ["172.16.0.0/16", "192.168.1.0/24", "10.1.0.0/16"])),
    ("name-128", _set("name", "n" * 128)),
]


@pytest.mark.parametrize("mutate", [c[1] for c in ALLOWED], ids=[c[0] for c in ALLOWED])
def test_what_aws_allows_is_accepted(mutate):
    data = good()
    mutate(data)
    assert parse_vpn_answer(data).connection is not None


# --- any input: a VpnAnswer or a PayloadError ---------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=80)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=20), inner, max_size=5), max_leaves=20)
FIELD_VALUES = JSON_VALUES | st.sampled_from([
    "0.0.0.0/1", "::/0", "10.0.0.0/8", "172.16.0.0/16", "198.51.100.1", "127.0.0.1", "fe80::1", "A" * 70_000,
    "0abcdefgh", "active", "ACTIVE", "pending", "failed", "deleted", "UP", "DOWN", "", " ", "\n", "\x00",
    "10.0.0.1/16", "1.2.3.4/33", 1, 2, -1, 2**70, True, [], {}])
PATHS = st.sampled_from([
    "id", "name", "public_ip", "routable_cidrs", "space_cidr_block", "ike_version", "status", "status_message",
    "tunnels", "tunnels[0].ip", "tunnels[1].ip", "tunnels[0].pre_shared_key", "tunnels[1].pre_shared_key",
    "tunnels[0].status", "tunnels[1].last_status_change", "tunnels[0].customer_ip", "tunnels[1].status_message"])


def _mutated(changes: list[tuple[str, object]]) -> dict:
    data = copy.deepcopy(GOOD)
    for path, value in changes:
        try:
            _set(path, value)(data)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier change replaced the parent: nothing to set there
    return data


def _parses_or_refuses(data: object) -> None:
    try:
        answer = parse_vpn_answer(data)
    except PayloadError as e:
        assert e.problems and PSK1 not in str(e) and PSK2 not in str(e)
        return
    if answer.connection is not None:
        for tunnel in answer.connection.tunnels:
            assert 8 <= len(tunnel.psk.reveal()) <= 64


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES)
def test_any_json_value_gives_an_answer_or_a_payload_error(data):
    _parses_or_refuses(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(PATHS, FIELD_VALUES), min_size=1, max_size=4))
def test_any_mutated_answer_gives_an_answer_or_a_payload_error(changes):
    _parses_or_refuses(_mutated(changes))


# --- a refused answer changes nothing that runs -------------------------------------------

HOSTILE = [
    ("space-half-internet", _set("space_cidr_block", "0.0.0.0/1"), "space_cidr_block"),
    ("psk-70000", _set("tunnels[0].pre_shared_key", LONG_PSK), "tunnels[0].pre_shared_key"),
    ("tunnel-ip-loopback", _set("tunnels[1].ip", "127.0.0.1"), "tunnels[1].ip"),
]


@pytest.mark.parametrize("mutate, field", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_a_refused_answer_keeps_the_last_good_one_the_cache_and_the_tunnels(config_file, mutate, field):
    """Through the real adapter: the poller posts the refusal as an ApiFailure; charon
    gets no call, the cache keeps the last good answer, status names the field."""
    import httpx

    from agent.adapters.heroku import ApiPayloadError, PlatformApi
    from agent.core.model import Secret
    from agent.daemon.messages import ApiFailure
    from tests.unit.test_controller import FakeCharon, answer, make_controller, vpn_json

    charon = FakeCharon()
    controller, cache = make_controller(config_file, charon)
    good_body = vpn_json()
    controller.handle(answer(good_body))
    controller.reconcile_pass()
    controller.reconcile_pass()
    cached_before = cache.path("acme-space", "office").read_bytes()
    charon.calls.clear()

    hostile = copy.deepcopy(good_body)
    mutate(hostile)
    api = PlatformApi("http://127.0.0.1:9", Secret("HRKU-test"), timeout=5.0, attempts=1,
                      transport=httpx.MockTransport(lambda request: httpx.Response(200, json=hostile)))
    with pytest.raises(ApiPayloadError) as refused:
        api.get_vpn_connection("acme-space", "office")
    controller.handle(ApiFailure("acme-space-office", refused.value.kind, str(refused.value)))
    controller.reconcile_pass()

    assert charon.calls == []
    assert cache.path("acme-space", "office").read_bytes() == cached_before
    view = controller.snapshot.connections[0]
    assert f"{field}:" in view.api_error and LONG_PSK not in view.api_error
    assert view.health is Health.OK
    record = controller.state.records["acme-space-office"]
    assert record.far_end.vpn == parse_vpn_answer(good_body).connection
