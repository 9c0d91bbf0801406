"""The address watch wakes the loop when an address comes or goes: checked in a network
namespace of its own (unshare), so the host's addresses are never touched."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from agent.adapters.address_watch import AddressWatch

CHILD = textwrap.dedent("""
    import queue, subprocess, time
    from agent.adapters.address_watch import AddressesChanged, AddressWatch
    inbox = queue.SimpleQueue()
    watch = AddressWatch(inbox.put)
    watch.start()
    time.sleep(0.2)
    for verb in ("add", "del"):
        subprocess.run(["ip", "addr", verb, "198.51.100.77/32", "dev", "lo"], check=True)
        started = time.monotonic()
        message = inbox.get(timeout=2)
        assert isinstance(message, AddressesChanged), message
        print(verb, round((time.monotonic() - started) * 1000))
        while not inbox.empty():
            inbox.get()
    watch.stop()
""")


def test_an_address_added_or_removed_wakes_the_loop():
    result = subprocess.run(["unshare", "--net", sys.executable, "-c", CHILD], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split("\n")
    assert [line.split()[0] for line in lines if line] == ["add", "del"]
    assert all(int(line.split()[1]) < 2000 for line in lines if line)


def test_stop_returns_promptly_without_events():
    watch = AddressWatch(lambda message: None)
    watch.start()
    watch.stop()
    assert not watch._thread.is_alive()
