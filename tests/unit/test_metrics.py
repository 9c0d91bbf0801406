"""/metrics: the collector against a hand-reviewed golden exposition, the Prometheus
naming rules (promtool when installed), counters that only grow, and a real HTTP
scrape of MetricsServer on a loopback port."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from agent.adapters.metrics import MetricsServer, SnapshotCollector
from agent.core.snapshot import ApiBudgetView, ConnectionView, Health, Snapshot, TunnelView
from tests.unit.tools import required_tool

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
ALLOWED_LABELS = {"space", "vpn", "tunnel", "tunnel_ip", "state", "kind", "reason", "result", "version",
                  "strongswan_version", "stage"}


def tunnel_view(number: int, **fields) -> TunnelView:
    defaults = {"number": number, "ip": f"203.0.113.1{number}", "api_status": "UP", "ike_state": "ESTABLISHED",
                "child_state": "NONE", "role": "standby"}
    return TunnelView(**{**defaults, **fields})


def connection(vpn: str, health: Health, tunnels: tuple[TunnelView, ...], **fields) -> ConnectionView:
    defaults = {"space": "acme-space", "vpn": vpn, "mode": "policy", "mode_reason": "configured", "source": "api",
                "connection_status": "active", "stage": "active", "generation": 1, "health": health, "summary": "",
                "tunnels": tunnels}
    return ConnectionView(**{**defaults, **fields})


def snapshot(*connections: ConnectionView, **fields) -> Snapshot:
    defaults = {"agent_version": "1.2.0", "started_at": 1700000000.0, "generated_at": 1700000060.0,
                "charon_reachable": True, "charon_version": "5.9.13", "ready": True, "connections": connections}
    return Snapshot(**{**defaults, **fields})


OFFICE = connection("office", Health.OK, (
    tunnel_view(1, child_state="INSTALLED", role="active", established_seconds=3725, established_at=1699996335.0,
                bytes_in=2048, bytes_out=1024, packets_in=20, packets_out=10,
                bytes_in_total=1572864, bytes_out_total=524288, packets_in_total=1210, packets_out_total=987,
                last_inbound_seconds=2, probe_sent=120, probe_lost=1, probe_rtt_ms=12.5,
                initiates={"success": 3, "timeout": 1}),
    tunnel_view(2, established_seconds=75, established_at=1699999985.0, drained=True,
                initiates={"success": 1}),
), api_last_success=1700000050.0, api_errors={"rate_limited": 2, "unavailable": 5},
    failover_counts={"telemetry": 1, "failback": 1})

# Configured but down: API maintenance on tunnel 1, tunnel 2 in a state the list lacks.
LAB = connection("lab", Health.DOWN, (
    tunnel_view(1, api_status="DOWN", ike_state="DOWN", role="active"),
    tunnel_view(2, api_status="UNKNOWN", ike_state="PASSIVE", child_state="NONE"),
), mode="route", source="cache", connection_errors={"apply": 3})

# The token's pool runs low: two connections a round, the poller waits 80 s, not 30 s.
GOLDEN_SNAPSHOT = snapshot(OFFICE, LAB, api_budget=ApiBudgetView(
    remaining=200, poll_interval=80.0, base_interval=30.0, stretched=True, calls_per_round=2))


def exposition(snap: Snapshot) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snap))
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_golden_exposition():
    assert exposition(GOLDEN_SNAPSHOT) == GOLDEN.read_text()


def test_one_snapshot_read_per_scrape():
    calls = []
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: calls.append(1) or GOLDEN_SNAPSHOT))
    generate_latest(registry)
    assert len(calls) == 1


def test_configured_but_down_tunnel_stays_exported():
    down = snapshot(connection("lab", Health.DOWN, (
        tunnel_view(1, api_status="DOWN", ike_state="DOWN", role="active"),
        tunnel_view(2, ike_state="DOWN"),
    )), charon_reachable=False)
    found = samples(exposition(down))
    for number, ip in (("1", "203.0.113.11"), ("2", "203.0.113.12")):
        labels = (("space", "acme-space"), ("tunnel", number), ("tunnel_ip", ip), ("vpn", "lab"))
        assert found["space_vpn_tunnel_configured", labels] == 1
        assert found["space_vpn_tunnel_ike_state", tuple(sorted((*labels, ("state", "DOWN"))))] == 1
        assert found["space_vpn_tunnel_receive_bytes_total", labels] == 0
    assert found["space_vpn_charon_up", ()] == 0


def test_optional_values_are_absent_not_zero():
    text = exposition(GOLDEN_SNAPSHOT)
    lab_tunnel_2 = 'tunnel="2",tunnel_ip="203.0.113.12",vpn="lab"'
    for name in ("space_vpn_tunnel_api_up", "space_vpn_tunnel_established_timestamp_seconds",
                 "space_vpn_tunnel_last_inbound_seconds", "space_vpn_tunnel_probe_rtt_seconds"):
        assert f"{name}{{space=\"acme-space\",{lab_tunnel_2}}}" not in text
    assert 'space_vpn_api_last_success_timestamp_seconds{space="acme-space",vpn="lab"}' not in text


def test_the_api_budget_is_one_series_per_agent_and_absent_while_nothing_is_polled():
    found = samples(exposition(GOLDEN_SNAPSHOT))
    assert (found["space_vpn_api_rate_limit_remaining", ()], found["space_vpn_api_poll_interval_seconds", ()],
            found["space_vpn_api_poll_stretched", ()]) == (200, 80.0, 1)
    assert "space_vpn_api_poll" not in exposition(snapshot(OFFICE))
    unknown = samples(exposition(snapshot(OFFICE, api_budget=ApiBudgetView(None, 30.0, 30.0, False, 1))))
    assert ("space_vpn_api_rate_limit_remaining", ()) not in unknown
    assert unknown["space_vpn_api_poll_stretched", ()] == 0


def test_connections_that_leave_the_snapshot_stop_being_exported():
    assert 'vpn="lab"' in exposition(GOLDEN_SNAPSHOT)
    assert 'vpn="lab"' not in exposition(snapshot(OFFICE))


def test_counters_end_in_total_and_never_decrease():
    later = snapshot(connection("office", Health.OK, (
        # A rekey: the new CHILD_SA starts from zero, the loop's totals keep growing.
        tunnel_view(1, child_state="INSTALLED", role="active", bytes_in=0, bytes_out=0, packets_in=0, packets_out=0,
                    bytes_in_total=1600000, bytes_out_total=530000, packets_in_total=1300, packets_out_total=1000,
                    probe_sent=130, probe_lost=1, initiates={"success": 3, "timeout": 2}),
        tunnel_view(2, initiates={"success": 1}),
    ), api_errors={"rate_limited": 2, "unavailable": 6}, failover_counts={"telemetry": 2, "failback": 1}))
    before, after = exposition(snapshot(OFFICE)), exposition(later)
    counters = [f for f in text_string_to_metric_families(before) if f.type == "counter"]
    assert counters
    for family in counters:
        assert family.name.startswith("space_vpn_")
        assert all(s.name.endswith("_total") for s in family.samples), family.name
    old, new = samples(before), samples(after)
    for key, value in old.items():
        if key[0].endswith("_total"):
            assert new[key] >= value, key


def test_labels_never_carry_charon_ids():
    names = {name for _, labels in samples(exposition(GOLDEN_SNAPSHOT)) for name, _ in labels}
    assert names <= ALLOWED_LABELS
    assert not names & {"uniqueid", "unique_id", "spi", "reqid", "ike_id", "child_id"}


def test_no_secret_reaches_the_snapshot_or_the_exposition():
    views = (Snapshot, ConnectionView, TunnelView, ApiBudgetView)
    fields = {f.name.lower() for cls in views for f in dataclasses.fields(cls)}
    assert not [f for f in fields if any(word in f for word in ("psk", "token", "secret", "password", "key"))]
    text = exposition(GOLDEN_SNAPSHOT).lower()
    assert not any(word in text for word in ("psk", "token", "secret", "password"))


@pytest.fixture
def promtool() -> str:
    return required_tool("promtool", "prometheus")


def test_promtool_accepts_the_exposition(promtool):
    result = subprocess.run([promtool, "check", "metrics"], input=exposition(GOLDEN_SNAPSHOT),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_server_serves_its_own_registry():
    default_before = {m.name for m in REGISTRY.collect()}
    server = MetricsServer("127.0.0.1", 0, lambda: GOLDEN_SNAPSHOT)
    server.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'space_vpn_tunnel_configured{space="acme-space",tunnel="1"' in response.text
    assert "process_cpu_seconds_total" in response.text
    assert {m.name for m in REGISTRY.collect()} == default_before


def test_port_in_use_names_the_address_and_the_config_key():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer("127.0.0.1", port, lambda: GOLDEN_SNAPSHOT)
        with pytest.raises(OSError, match=f"metrics.listen 127.0.0.1:{port}"):
            server.start()
    server.stop()  # never started: nothing to do


# -- the bounded HTTP server: same exposition, no thread per client ---------------------

def raw_get(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def without_volatile(response: bytes) -> tuple[bytes, list[bytes]]:
    """(status line and headers but Date, body lines but process_* and Content-Length)."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith((b"Date:", b"Content-Length:"))]
    return b"\r\n".join(lines), [line for line in body.split(b"\n") if b"process_" not in line]


@pytest.mark.parametrize("head", [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    b"GET /metrics?name[]=space_vpn_tunnel_configured HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /favicon.ico HTTP/1.1\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS /metrics HTTP/1.1\r\n\r\n",
    b"BREW\r\n\r\n",
], ids=["text", "openmetrics", "name-filter", "favicon", "post", "options", "garbage"])
def test_the_answer_is_the_one_prometheus_clients_own_server_gives(head):
    from prometheus_client import start_http_server

    server = MetricsServer("127.0.0.1", 0, lambda: GOLDEN_SNAPSHOT)
    server.start()
    theirs, _ = start_http_server(0, addr="127.0.0.1", registry=server.registry)
    try:
        mine = raw_get(server.port, head)
        reference = raw_get(theirs.server_port, head)
    finally:
        server.stop()
        theirs.shutdown()
        theirs.server_close()
    assert without_volatile(mine) == without_volatile(reference)


def test_gzip_is_offered_as_before():
    server = MetricsServer("127.0.0.1", 0, lambda: GOLDEN_SNAPSHOT)
    server.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
    finally:
        server.stop()
    assert response.headers["content-encoding"] == "gzip"
    assert 'space_vpn_tunnel_configured{space="acme-space",tunnel="1"' in response.text


def test_300_trickling_clients_hold_no_threads_and_a_scrape_is_still_fast():
    import threading
    import time

    from agent.adapters.bounded_server import Limits

    server = MetricsServer("127.0.0.1", 0, lambda: GOLDEN_SNAPSHOT, Limits(request_deadline=1.0, max_request=8192))
    server.start()
    threads_before = threading.active_count()
    clients = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.setblocking(False)
            try:
                sock.send(b"GET /met")
            except OSError:
                pass
            clients.append(sock)
        time.sleep(0.3)
        for sock in clients:
            try:
                sock.send(b"r")
            except OSError:
                pass
        started = time.monotonic()
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=2)
        assert response.status_code == 200 and "space_vpn_tunnel_configured" in response.text
        assert time.monotonic() - started < 0.5
        assert threading.active_count() - threads_before <= 16
        assert server._server.open_clients <= 16
        time.sleep(1.3)  # past the deadline: every trickler is let go
        assert server._server.open_clients == 0
    finally:
        for sock in clients:
            sock.close()
        server.stop()


def test_an_oversized_request_head_is_not_kept():
    server = MetricsServer("127.0.0.1", 0, lambda: GOLDEN_SNAPSHOT)
    server.start()
    try:
        try:
            answer = raw_get(server.port, b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 20000 + b"\r\n\r\n")
        except ConnectionResetError:
            answer = None  # closed with part of the junk unread: the kernel resets, the answer may go
    finally:
        server.stop()
    assert answer in (None, b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")


def test_ha_state_is_one_series_per_state_and_absent_without_ha():
    backup = dataclasses.replace(OFFICE, ha="backup", ha_reason="203.0.113.10 is not on this node")
    found = samples(exposition(snapshot(backup, LAB)))
    states = {dict(labels)["state"]: value for (name, labels), value in found.items()
              if name == "space_vpn_ha_state" and dict(labels)["vpn"] == OFFICE.vpn}
    assert states == {"master": 0.0, "backup": 1.0, "fault": 0.0}
    assert not any(name == "space_vpn_ha_state" and dict(labels)["vpn"] == LAB.vpn for name, labels in found)


def test_every_api_error_kind_is_exported_from_the_start():
    """rate() and the alert rules see the first error of each kind: all start at 0."""
    import inspect

    from agent.adapters import heroku

    raised = {cls.default_kind for _, cls in inspect.getmembers(heroku, inspect.isclass)
              if issubclass(cls, heroku.PlatformApiError)}
    raised |= set(__import__("re").findall(r'kind="(\w+)"', inspect.getsource(heroku)))
    assert raised <= set(heroku.API_ERROR_KINDS)
    quiet = samples(exposition(snapshot(connection("office", Health.OK, (tunnel_view(1), tunnel_view(2))))))
    kinds = {dict(labels)["kind"] for (name, labels) in quiet if name == "space_vpn_api_errors_total"}
    assert kinds == set(heroku.API_ERROR_KINDS)


def test_the_last_pass_duration_is_one_series_per_agent_and_absent_before_the_first_pass():
    assert "space_vpn_pass_duration_seconds" not in exposition(snapshot(OFFICE))
    found = samples(exposition(snapshot(OFFICE, pass_seconds=0.0125)))
    assert found["space_vpn_pass_duration_seconds", ()] == 0.0125
