"""`space-vpn-agent check-config`: a valid config passes; one the loop would refuse to
load (IKEv1 with several routable CIDRs, from a static section or the cached Platform
API answer) fails with the fixes."""

from __future__ import annotations

from pathlib import Path

import yaml

from agent.adapters.connection_cache import ConnectionCache
from agent.daemon.main import main

TWO_CIDRS = ["172.16.0.0/16", "192.168.50.0/24"]


def answer(ike_version: int, routable: list[str]) -> dict:
    tunnel = {"customer_ip": "203.0.113.10", "status": "UP", "status_message": "", "last_status_change": ""}
    return {
        "id": "123456789012", "name": "office", "public_ip": "203.0.113.10", "routable_cidrs": routable,
        "space_cidr_block": "10.0.0.0/16", "ike_version": ike_version, "status": "active", "status_message": "",
        "tunnels": [dict(tunnel, ip="198.51.100.1", pre_shared_key="first.Psk_value1"),
                    dict(tunnel, ip="198.51.100.2", pre_shared_key="second.Psk_value2")],
    }


def write_config(tmp_path: Path, **connection) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "connections": [{"space": "acme-space", "vpn": "office", **connection}]}))
    return path


def check(path: Path, capsys) -> tuple[int, str, str]:
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_without_a_cache_the_config_alone_is_checked(tmp_path, capsys):
    assert check(write_config(tmp_path), capsys)[0] == 0


def test_a_cached_ikev1_answer_with_two_cidrs_fails_with_the_fixes(tmp_path, capsys):
    path = write_config(tmp_path)
    ConnectionCache(tmp_path / "state").save("acme-space", "office", answer(1, TWO_CIDRS))
    code, out, err = check(path, capsys)
    assert code == 2 and out == ""
    assert "connections[0] (acme-space/office), as the last Platform API answer" in err
    assert "only 172.16.0.0/16 would cross the tunnel, not 192.168.50.0/24" in err
    assert "IKEv2" in err and "set traffic_selectors: wide" in err
    assert "first.Psk_value1" not in err


def test_cached_answers_whose_every_cidr_crosses_pass(tmp_path, capsys):
    cache = ConnectionCache(tmp_path / "state")
    cache.save("acme-space", "office", answer(2, TWO_CIDRS))
    assert check(write_config(tmp_path), capsys)[0] == 0
    cache.save("acme-space", "office", answer(1, TWO_CIDRS))
    assert check(write_config(tmp_path, mode="route", traffic_selectors="wide"), capsys)[0] == 0
