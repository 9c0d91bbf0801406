"""Validation of the vpn-connection body: the documented example parses, each defect is
reported with its exact key path, and no message ever carries a pre-shared key."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, strategies as st

from agent.core.model import ConnectionStatus, Secret, TunnelApiStatus
from agent.core.payload import MAX_STATUS_MESSAGE, PayloadError, parse_vpn_answer, parse_vpn_connection

PSK1 = "psk.one_Xq9Lr2"
PSK2 = "psk.two_Zk4Tn7"

GOOD = {
    "id": "123456789012",
    "name": "office",
    "public_ip": "203.0.113.10",
    "routable_cidrs": ["172.16.0.0/16"],
    "space_cidr_block": "10.0.0.0/16",
    "ike_version": 1,
    "status": "active",
    "status_message": "",
    "tunnels": [
        {"ip": "198.51.100.1", "customer_ip": "203.0.113.10", "pre_shared_key": PSK1,
         "status": "UP", "status_message": "", "last_status_change": "2016-10-25T22:09:05Z"},
        {"ip": "198.51.100.2", "customer_ip": "203.0.113.10", "pre_shared_key": PSK2,
         "status": "DOWN", "status_message": "", "last_status_change": "2016-10-25T22:09:05Z"},
    ],
}


def good() -> dict:
    return copy.deepcopy(GOOD)


def test_documented_example_parses():
    conn = parse_vpn_connection(good())
    assert conn.id == "123456789012"
    assert conn.name == "office"
    assert conn.public_ip == "203.0.113.10"
    assert conn.routable_cidrs == ("172.16.0.0/16",)
    assert conn.space_cidr_block == "10.0.0.0/16"
    assert conn.ike_version == 1
    assert conn.status is ConnectionStatus.ACTIVE
    assert [t.number for t in conn.tunnels] == [1, 2]
    assert conn.tunnel(1).ip == "198.51.100.1"
    assert conn.tunnel(1).psk == Secret(PSK1)
    assert conn.tunnel(2).psk.reveal() == PSK2
    assert conn.tunnel(1).status is TunnelApiStatus.UP
    assert conn.tunnel(2).status is TunnelApiStatus.DOWN
    assert conn.tunnel(2).last_status_change == "2016-10-25T22:09:05Z"


def test_cidrs_are_normalised_and_unknown_status_tolerated():
    data = good()
    data["routable_cidrs"] = ["192.168.1.7/24", "172.20.0.0/16"]
    data["space_cidr_block"] = "10.0.0.1/16"
    data["status"] = "available"
    data["ike_version"] = 2
    for t in data["tunnels"]:
        t["status"] = "weird"
        del t["customer_ip"]
        t["status_message"] = None
    conn = parse_vpn_connection(data)
    assert conn.routable_cidrs == ("192.168.1.0/24", "172.20.0.0/16")
    assert conn.space_cidr_block == "10.0.0.0/16"
    assert conn.status is ConnectionStatus.UNKNOWN
    assert conn.ike_version == 2
    assert conn.tunnel(1).status is TunnelApiStatus.UNKNOWN
    assert conn.tunnel(1).status_message == ""


def _set(path: str, value):
    """Build a mutator that sets (or deletes, for the sentinel) one key path."""

    def mutate(data: dict) -> None:
        *parents, last = path.split(".")
        target = data
        for part in parents:
            name, _, idx = part.partition("[")
            target = target[name][int(idx.rstrip("]"))] if idx else target[name]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()

BAD_CASES = [
    ("tunnels.1.ip", _set("tunnels[1].ip", "abc"), "tunnels[1].ip: 'abc' is not an IP address"),
    ("rfc1918", _set("routable_cidrs", ["8.8.0.0/16"]),
     "routable_cidrs[0]: 8.8.0.0/16 is not inside RFC 1918 (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"),
    ("overlap", _set("routable_cidrs", ["10.0.0.0/24"]),
     "routable_cidrs[0]: 10.0.0.0/24 overlaps space_cidr_block 10.0.0.0/16"),
    ("ike3", _set("ike_version", 3), "ike_version: must be 1 or 2, got 3"),
    ("ike-bool", _set("ike_version", True), "ike_version: must be 1 or 2, got True"),
    ("ike-str", _set("ike_version", "2"), "ike_version: must be 1 or 2, got '2'"),
    ("ike-float", _set("ike_version", 1.0), "ike_version: must be 1 or 2, got 1.0"),
    ("one-tunnel", lambda d: d["tunnels"].pop(), "tunnels: expected 2 tunnels, got 1"),
    ("tunnels-type", _set("tunnels", {}), "tunnels: expected a list, got dict"),
    ("tunnel-type", _set("tunnels", [GOOD["tunnels"][0], "x"]),
     "tunnels[1]: expected an object, got str"),
    ("id-missing", _set("id", _DELETE), "id: missing"),
    ("id-int", _set("id", 12), "id: expected a string, got int"),
    ("name-empty", _set("name", ""), "name: must not be empty"),
    ("public-ip", _set("public_ip", "35.161.69"), "public_ip: '35.161.69' is not an IP address"),
    ("space-cidr", _set("space_cidr_block", "nope"), "space_cidr_block: 'nope' is not a network"),
    ("cidrs-empty", _set("routable_cidrs", []), "routable_cidrs: must not be empty"),
    ("cidrs-type", _set("routable_cidrs", "172.16.0.0/16"),
     "routable_cidrs: expected a list, got str"),
    ("cidr-garbage", _set("routable_cidrs", ["172.16.0.0/33"]),
     "routable_cidrs[0]: '172.16.0.0/33' is not a network"),
    ("cidr-int", _set("routable_cidrs", [5]), "routable_cidrs[0]: expected a string, got int"),
    ("ipv6-cidr", _set("routable_cidrs", ["fd00::/8"]),
     "routable_cidrs[0]: fd00::/8 is not an IPv4 network (a Private Space VPN routes IPv4 only)"),
    ("status-missing", _set("status", _DELETE), "status: missing"),
    ("status-message-type", _set("status_message", 3), "status_message: expected a string, got int"),
    ("customer-ip", _set("tunnels[0].customer_ip", "x"),
     "tunnels[0].customer_ip: 'x' is not an IP address"),
    ("psk-empty", _set("tunnels[0].pre_shared_key", ""), "tunnels[0].pre_shared_key: must not be empty"),
    ("psk-missing", _set("tunnels[1].pre_shared_key", _DELETE), "tunnels[1].pre_shared_key: missing"),
    ("psk-type", _set("tunnels[0].pre_shared_key", 1234),
     "tunnels[0].pre_shared_key: expected a string, got int"),
    ("tunnel-status", _set("tunnels[0].status", None), "tunnels[0].status: missing"),
    ("last-change", _set("tunnels[1].last_status_change", 5),
     "tunnels[1].last_status_change: expected a string, got int"),
]


@pytest.mark.parametrize("mutate, expected", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_each_defect_has_its_exact_message(mutate, expected):
    data = good()
    mutate(data)
    with pytest.raises(PayloadError) as info:
        parse_vpn_connection(data)
    assert info.value.problems == (expected,)
    assert expected in str(info.value)


@pytest.mark.parametrize("data", [None, [], "x", 3])
def test_non_object_is_rejected(data):
    with pytest.raises(PayloadError) as info:
        parse_vpn_connection(data)
    assert info.value.problems[0].startswith("<root>: expected an object")


def test_all_problems_are_collected():
    data = good()
    data["ike_version"] = 3
    data["public_ip"] = "x"
    data["tunnels"][1]["ip"] = "abc"
    with pytest.raises(PayloadError) as info:
        parse_vpn_connection(data)
    assert set(info.value.problems) == {
        "public_ip: 'x' is not an IP address",
        "ike_version: must be 1 or 2, got 3",
        "tunnels[1].ip: 'abc' is not an IP address",
    }


def test_payload_error_is_a_value_error():
    assert issubclass(PayloadError, ValueError)


def test_messages_and_reprs_never_show_psks():
    data = good()
    for tunnel in data["tunnels"]:
        tunnel["ip"] = "bad"
        tunnel["status"] = 7
    data["tunnels"].append({"pre_shared_key": PSK1})
    with pytest.raises(PayloadError) as info:
        parse_vpn_connection(data)
    assert len(info.value.problems) > 3
    assert PSK1 not in str(info.value) and PSK2 not in str(info.value)
    assert PSK1 not in repr(info.value)
    conn = parse_vpn_connection(good())
    assert PSK1 not in repr(conn) and PSK2 not in repr(conn)
    assert PSK1 not in str(conn.tunnel(1))


# --- the answer's life-cycle status first ---------------------------------------------------

@pytest.mark.parametrize("status", ["pending", "provisioning", "failed", "deprovisioning", "deleting", "deleted"])
def test_an_incomplete_answer_is_a_stage_not_an_error(status):
    """Heroku answers a connection being built (or failed) without tunnels."""
    answer = parse_vpn_answer({"id": "1", "name": "office", "status": status,
                               "status_message": "supplied CIDR block already in use", "tunnels": []})
    assert answer.status is ConnectionStatus(status)
    assert answer.connection is None
    assert answer.status_message == "supplied CIDR block already in use"


def test_an_active_answer_is_validated_fully():
    assert parse_vpn_answer(good()).connection == parse_vpn_connection(good())
    data = good()
    data["tunnels"] = []
    with pytest.raises(PayloadError, match="tunnels: expected 2 tunnels"):
        parse_vpn_answer(data)


def test_an_unknown_status_is_used_when_complete_and_waited_on_otherwise():
    data = good()
    data["status"] = "available"
    answer = parse_vpn_answer(data)
    assert answer.status is ConnectionStatus.UNKNOWN and answer.status_text == "available"
    assert answer.connection is not None
    data["tunnels"] = []
    assert parse_vpn_answer(data).connection is None


def test_a_missing_status_is_refused_by_name():
    data = good()
    del data["status"]
    with pytest.raises(PayloadError, match="status: expected a string, got null"):
        parse_vpn_answer(data)


def test_two_tunnels_with_one_ip_are_refused():
    data = good()
    data["tunnels"][1]["ip"] = data["tunnels"][0]["ip"]
    with pytest.raises(PayloadError, match=r"tunnels\[1\]\.ip: 198.51.100.1 is the IP of another tunnel"):
        parse_vpn_connection(data)


@given(st.text(max_size=3000))
def test_status_messages_are_one_bounded_printable_line(message):
    answer = parse_vpn_answer({"status": "failed", "status_message": message})
    assert len(answer.status_message) <= MAX_STATUS_MESSAGE
    assert answer.status_message.isprintable()
