"""VICI messages built from the desired state (exact dicts, the seed ipsec.conf mapped
per shared/reference/strongswan-vici.md) and list-sas answers parsed from golden
streams whose values are bytes, as charon sends them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from agent.adapters.charon_messages import (
    initiate_message,
    load_conn_message,
    load_shared_message,
    parse_list_sas,
    terminate_message,
)
from agent.core.desired import DesiredConnection, desired_connection
from agent.core.model import ConnectionStatus, Secret, Tunnel, TunnelApiStatus, VpnConnection
from agent.core.modes import Mode
from agent.core.observation import ChildSa, IkeSa, TunnelSas

FIXTURES = Path(__file__).parent / "fixtures"
LOCAL = "198.51.100.10"
T1 = "svpn-acme-office-t1"
T2 = "svpn-acme-office-t2"
PSK1 = "alpha-Psk-one-Qx"
PSK2 = "bravo-Psk-two-Zk"


def golden(name: str) -> list:
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EVENTS


def make_conn(ike_version: int, local_id: str | None = None, mode: Mode = Mode.POLICY) -> DesiredConnection:
    vpn = VpnConnection(
        id="vpn-1",
        name="office",
        public_ip=LOCAL,
        routable_cidrs=("172.16.0.0/16", "192.168.10.0/24"),
        space_cidr_block="10.0.0.0/16",
        ike_version=ike_version,
        status=ConnectionStatus.ACTIVE,
        tunnels=(
            Tunnel(1, "203.0.113.11", Secret(PSK1), TunnelApiStatus.UP),
            Tunnel(2, "203.0.113.12", Secret(PSK2), TunnelApiStatus.UP),
        ),
    )
    return desired_connection(
        key="acme-office", space="acme-space", vpn="office", local_address=LOCAL,
        local_id=local_id, mode=mode, connection=vpn,
    )


def expected_child(name: str) -> dict:
    return {
        name: {
            "mode": "tunnel",
            "local_ts": ["172.16.0.0/16", "192.168.10.0/24"],
            "remote_ts": ["10.0.0.0/16"],
            "esp_proposals": ["aes256-sha256-modp2048"],
            "life_time": "3600s",
            "rekey_time": "3060s",
            "dpd_action": "restart",
            "start_action": "none",
            "close_action": "none",
        }
    }


def test_load_conn_ikev1_maps_the_seed_ipsec_conf():
    assert load_conn_message(make_conn(1), 1) == {
        T1: {
            "version": "1",
            "local_addrs": [LOCAL],
            "remote_addrs": ["203.0.113.11"],
            "proposals": ["aes256-sha256-modp2048"],
            "dpd_delay": "1s",
            "dpd_timeout": "3s",
            "keyingtries": "0",
            "unique": "no",
            "local": {"auth": "psk", "id": LOCAL},
            "remote": {"auth": "psk", "id": "203.0.113.11"},
            "reauth_time": "28800s",
            "rekey_time": "0",
            "children": expected_child(T1),
        }
    }


def test_load_conn_ikev2_rekeys_and_has_no_dpd_timeout():
    assert load_conn_message(make_conn(2, local_id="gw.acme.example"), 2) == {
        T2: {
            "version": "2",
            "local_addrs": [LOCAL],
            "remote_addrs": ["203.0.113.12"],
            "proposals": ["aes256-sha256-modp2048"],
            "dpd_delay": "1s",
            "keyingtries": "0",
            "unique": "no",
            "mobike": "no",
            "local": {"auth": "psk", "id": "gw.acme.example"},
            "remote": {"auth": "psk", "id": "203.0.113.12"},
            "rekey_time": "28800s",
            "children": expected_child(T2),
        }
    }


@pytest.mark.parametrize("ike_version", [1, 2])
@pytest.mark.parametrize("number", [1, 2])
def test_load_conn_never_uses_the_sha2_keyword(ike_version, number):
    message = load_conn_message(make_conn(ike_version), number)
    assert "sha2-" not in repr(message)
    assert PSK1 not in repr(message) and PSK2 not in repr(message)


@pytest.mark.parametrize(
    "number, local_id, expected",
    [
        (1, None, {"id": T1, "type": "IKE", "data": PSK1.encode(), "owners": [LOCAL, "203.0.113.11"]}),
        (2, "gw.acme.example",
         {"id": T2, "type": "IKE", "data": PSK2.encode(), "owners": ["gw.acme.example", "203.0.113.12"]}),
    ],
)
def test_load_shared_carries_the_psk_as_bytes_and_both_owners(number, local_id, expected):
    message = load_shared_message(make_conn(1, local_id=local_id), number)
    assert message == expected
    assert isinstance(message["data"], bytes)


@pytest.mark.parametrize(
    "child, timeout_ms, expected",
    [
        (True, 15000, {"ike": T1, "child": T1, "timeout": "15000", "loglevel": "0"}),
        (False, 15000, {"ike": T1, "timeout": "15000", "loglevel": "0"}),
        (True, -1, {"ike": T1, "child": T1, "timeout": "-1", "loglevel": "0"}),
    ],
    ids=["child", "ike-only-standby", "return-at-once"],
)
def test_initiate_message_always_has_a_timeout(child, timeout_ms, expected):
    assert initiate_message(T1, child=child, timeout_ms=timeout_ms) == expected


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"ike_id": "7", "timeout_ms": 5000}, {"ike-id": "7", "force": "yes", "timeout": "5000", "loglevel": "0"}),
        ({"child_id": "21", "timeout_ms": 5000}, {"child-id": "21", "timeout": "5000", "loglevel": "0"}),
    ],
    ids=["ike-forced", "child"],
)
def test_terminate_message(kwargs, expected):
    assert terminate_message(**kwargs) == expected


def test_parse_list_sas_groups_reauth_overlap_under_one_tunnel():
    parsed = parse_list_sas(golden("list_sas_ikev1_reauth"))
    assert parsed == {
        T1: TunnelSas((
            IkeSa(
                name=T1, uniqueid="7", state="ESTABLISHED", version=1,
                local_host=LOCAL, remote_host="203.0.113.11", established=28650,
                children=(ChildSa(
                    name=T1, uniqueid="12", state="INSTALLED", reqid="1",
                    bytes_in=1572864, bytes_out=524288, packets_in=1210, packets_out=987,
                    use_in=2, use_out=1, install_time=1920, spi_in="c4f1a9e2",
                    local_ts=("172.16.0.0/16",), remote_ts=("10.0.0.0/16",),
                ),),
            ),
            IkeSa(name=T1, uniqueid="9", state="CONNECTING", version=1,
                  local_host=LOCAL, remote_host="203.0.113.11", established=None,
                  tasks_active=("ISAKMP_VENDOR", "MAIN_MODE")),
        )),
        T2: TunnelSas((
            IkeSa(name=T2, uniqueid="8", state="ESTABLISHED", version=1,
                  local_host=LOCAL, remote_host="203.0.113.12", established=3000),
        )),
    }


def test_parse_list_sas_child_without_traffic_has_no_use_in():
    parsed = parse_list_sas(golden("list_sas_fresh_child"))
    assert list(parsed) == [T2]
    (child,) = parsed[T2].children
    assert child == ChildSa(
        name=T2, uniqueid="44", state="INSTALLED", reqid="1",
        use_in=None, use_out=None, install_time=4, spi_in="e8a0c2f4",
        local_ts=("172.16.0.0/16",), remote_ts=("10.0.0.0/16",),
    )
    assert parsed[T2].ike_sas[0].version == 2


def test_parse_list_sas_of_nothing_is_empty():
    assert parse_list_sas([]) == {}


def test_tunnel_sas_views_during_reauth():
    sas = parse_list_sas(golden("list_sas_ikev1_reauth"))
    t1, t2 = sas[T1], sas[T2]
    assert t1.established_ike.uniqueid == "7"
    assert t1.ike_state == "ESTABLISHED"
    assert [c.uniqueid for c in t1.children] == ["12"]
    assert t1.installed_child.uniqueid == "12"
    assert t1.child_state == "INSTALLED"
    assert t1.ike_owning(t1.installed_child).uniqueid == "7"
    assert t2.ike_state == "ESTABLISHED"
    assert t2.installed_child is None
    assert t2.child_state == "NONE"


def _ike(state: str, *child_states: str) -> IkeSa:
    children = tuple(ChildSa(name=T1, uniqueid=str(i), state=s) for i, s in enumerate(child_states, 20))
    return IkeSa(name=T1, uniqueid="7", state=state, children=children)


@pytest.mark.parametrize(
    "ike_sas, ike_state, child_state, installed",
    [
        ((), "DOWN", "NONE", None),
        ((_ike("CONNECTING"),), "CONNECTING", "NONE", None),
        ((_ike("DELETING", "INSTALLED"),), "DELETING", "INSTALLED", "20"),
        ((_ike("ESTABLISHED", "REKEYED", "INSTALLED"),), "ESTABLISHED", "INSTALLED", "21"),
        ((_ike("ESTABLISHED", "REKEYING"),), "ESTABLISHED", "REKEYING", None),
        ((_ike("CONNECTING"), _ike("ESTABLISHED")), "ESTABLISHED", "NONE", None),
    ],
    ids=["nothing", "connecting", "deleting-with-child", "rekey-overlap", "rekeying", "established-second"],
)
def test_tunnel_sas_states(ike_sas, ike_state, child_state, installed):
    sas = TunnelSas(ike_sas)
    assert sas.ike_state == ike_state
    assert sas.child_state == child_state
    assert (sas.installed_child.uniqueid if sas.installed_child else None) == installed


@pytest.mark.parametrize("number", [1, 2])
def test_route_mode_children_are_bound_to_their_interface(number):
    from agent.core.netstate import interface_id

    conn = make_conn(1, mode=Mode.ROUTE)
    name = conn.tunnel(number).conn_name
    child = load_conn_message(conn, number)[name]["children"][name]
    assert child["if_id_in"] == child["if_id_out"] == str(interface_id("acme-office", number))
    policy_child = load_conn_message(make_conn(1), number)[name]["children"][name]
    assert "if_id_in" not in policy_child and "if_id_out" not in policy_child
