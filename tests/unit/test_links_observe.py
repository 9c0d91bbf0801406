"""LinkManager.observe in a network namespace of its own (only lo and a veth pair, so
nothing leaves the machine): with none of the agent's XFRM interfaces present, the
route dump is skipped (a libipsec gateway's table of policy routes made it the dearest
part of an idle pass), and the addresses are still read."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

SCRIPT = """
import json
from agent.adapters.links import LinkManager
links = LinkManager()
dumps = []
real = links._ipr.get_routes
links._ipr.get_routes = lambda *a, **k: dumps.append(1) or real(*a, **k)
state = links.observe()
print(json.dumps({"routes": list(state.routes), "links": list(state.links), "addresses": list(state.addresses),
                  "dumps": len(dumps)}))
"""


@pytest.fixture
def netns():
    name = f"svlinks{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for args in (["link", "set", "lo", "up"], ["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                     ["link", "set", "v0", "up"], ["addr", "add", "10.98.0.1/24", "dev", "v0"],
                     ["route", "add", "172.31.1.0/24", "dev", "v0", "metric", "100"]):
            subprocess.run(["ip", "-n", name, *args], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_without_our_interfaces_no_route_dump_and_addresses_still_read(netns):
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SCRIPT],
                         capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert seen["dumps"] == 0 and seen["routes"] == [] and seen["links"] == []
    assert "10.98.0.1" in seen["addresses"]
