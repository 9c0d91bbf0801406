"""RouteSocket against the real kernel, in a namespace of its own: prepared routes replace
in place (the fast reroute's move) and a refusal comes back as an error text."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from agent.adapters.route_socket import RouteSocket
from space_vpn_lab.netns import in_netns

DST = "10.0.0.0/16"
SRC = "172.16.0.2"


def ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"svt-rs{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip(name, "link", "add", "rsa", "type", "veth", "peer", "name", "rsb")
        for link in ("rsa", "rsb"):
            ip(name, "link", "set", link, "up")
        ip(name, "addr", "add", f"{SRC}/24", "dev", "rsa")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def routes(netns: str) -> set[tuple]:
    return {(r["dev"], r.get("metric", 0), r.get("prefsrc")) for r in json.loads(ip(netns, "-j", "route", "show", DST))}


def test_prepared_routes_replace_in_place_and_refusals_come_back(netns):
    with in_netns(netns):
        sock = RouteSocket()
    try:
        index = {link["ifname"]: link["ifindex"] for link in json.loads(ip(netns, "-j", "link", "show"))}
        assert sock.send([sock.prepare(DST, "rsa", index["rsa"], 100, SRC),
                          sock.prepare(DST, "rsb", index["rsb"], 200, None)]) == []
        assert routes(netns) == {("rsa", 100, SRC), ("rsb", 200, None)}

        assert sock.send([sock.prepare(DST, "rsb", index["rsb"], 100, SRC)]) == []  # the move
        assert routes(netns) == {("rsb", 100, SRC), ("rsb", 200, None)}

        errors = sock.send([sock.prepare("10.2.0.0/16", "gone", 99999, 100, None)])
        assert len(errors) == 1 and errors[0].startswith("route 10.2.0.0/16 dev gone metric 100: ")
        assert "No such device" in errors[0]
    finally:
        sock.close()
