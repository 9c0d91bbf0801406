"""The address watch wakes the loop when an address comes or goes, or when a static
main-table route (what the agent writes in route mode) is deleted: checked in a network
namespace of its own (unshare), so the host's addresses and routes are never touched.
What it reads of a netlink message is checked on built and on arbitrary bytes."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

from hypothesis import given
from hypothesis import strategies as st

from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWROUTE

from agent.adapters.address_watch import AddressWatch, worth_a_look
from agent.adapters.netlink_messages import MAIN_TABLE as RT_TABLE_MAIN
from agent.adapters.netlink_messages import PROTO_STATIC as RTPROT_STATIC

CHILD = textwrap.dedent("""
    import queue, subprocess, sys, time
    from agent.adapters.address_watch import AddressesChanged, AddressWatch
    inbox = queue.SimpleQueue()
    watch = AddressWatch(inbox.put)
    watch.start()
    time.sleep(0.2)

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    def woken(label, timeout):
        started = time.monotonic()
        try:
            message = inbox.get(timeout=timeout)
        except Exception:
            print(label, "none")
            return
        assert isinstance(message, AddressesChanged), message
        print(label, round((time.monotonic() - started) * 1000))
        time.sleep(0.1)
        while not inbox.empty():
            inbox.get()

    ip("link", "set", "lo", "up")
    for verb in ("add", "del"):
        ip("addr", verb, "198.51.100.77/32", "dev", "lo")
        woken("addr-" + verb, 2)
    ip("addr", "add", "198.51.100.1/24", "dev", "lo")
    woken("addr-add", 2)
    # Added: nothing to restore. Deleted by someone else: the agent's kind of route.
    ip("route", "add", "10.50.0.0/16", "dev", "lo", "proto", "static", "metric", "100")
    woken("static-route-add", 0.5)
    ip("route", "del", "10.50.0.0/16", "dev", "lo", "proto", "static", "metric", "100")
    woken("static-route-del", 2)
    # Other routing: another protocol, another table.
    ip("route", "add", "10.51.0.0/16", "dev", "lo", "proto", "bird")
    ip("route", "del", "10.51.0.0/16", "dev", "lo", "proto", "bird")
    woken("bird-route-del", 0.5)
    ip("route", "add", "10.52.0.0/16", "dev", "lo", "table", "220", "proto", "static")
    ip("route", "del", "10.52.0.0/16", "dev", "lo", "table", "220", "proto", "static")
    woken("table-220-route-del", 0.5)
    watch.stop()
""")


def test_addresses_and_a_deleted_static_route_wake_the_loop_other_routing_does_not():
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", CHILD], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = dict(line.split() for line in result.stdout.split("\n") if line)
    assert seen.keys() == {"addr-add", "addr-del", "static-route-add", "static-route-del", "bird-route-del",
                           "table-220-route-del"}, result.stdout
    assert int(seen["addr-add"]) < 2000 and int(seen["addr-del"]) < 2000
    assert int(seen["static-route-del"]) < 2000
    assert (seen["static-route-add"], seen["bird-route-del"], seen["table-220-route-del"]) == ("none",) * 3


def test_stop_returns_promptly_without_events():
    watch = AddressWatch(lambda message: None)
    watch.start()
    watch.stop()
    assert not watch._thread.is_alive()


def message(kind: int, body: bytes = b"") -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + body + b"\x00" * (-length % 4)


def route(table: int, protocol: int) -> bytes:
    return struct.pack("=BBBBBBBBI", 2, 16, 0, 0, table, protocol, 0, 1, 0) + b"\x08\x00\x0f\x00" + b"\x00" * 4


def test_what_a_read_says():
    assert worth_a_look(message(RTM_NEWADDR, b"\x00" * 8))
    assert worth_a_look(message(RTM_DELADDR, b"\x00" * 8))
    assert worth_a_look(message(RTM_DELROUTE, route(RT_TABLE_MAIN, RTPROT_STATIC)))
    assert not worth_a_look(message(RTM_NEWROUTE, route(RT_TABLE_MAIN, RTPROT_STATIC)))
    assert not worth_a_look(message(RTM_DELROUTE, route(220, RTPROT_STATIC)))
    assert not worth_a_look(message(RTM_DELROUTE, route(RT_TABLE_MAIN, 12)))
    # Several messages in one read: any one worth a look is enough.
    assert worth_a_look(message(RTM_NEWROUTE, route(RT_TABLE_MAIN, 3)) + message(RTM_DELADDR, b"\x00" * 8))
    assert not worth_a_look(b"")
    assert not worth_a_look(message(RTM_DELROUTE, b"\x00" * 3))  # too short for a route


@given(st.binary(max_size=512))
def test_any_bytes_give_an_answer_and_never_raise(data):
    assert worth_a_look(data) in (True, False)
