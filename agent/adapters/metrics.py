"""Prometheus /metrics on `metrics.listen`: one custom Collector over the loop's Snapshot.

Every scrape reads the published Snapshot once and builds fresh metric families from it,
so a connection or tunnel that leaves the Snapshot simply stops being exported. Nothing
registers at import time; the server owns its own registry.
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from agent.adapters.bounded_server import BoundedServer, Client, Limits
from agent.adapters.heroku import API_ERROR_KINDS
from agent.core.failover import FailoverKind, TunnelRole
from agent.core.faults import FaultStage
from agent.core.ha import HaState
from agent.core.lifecycle import Stage
from agent.core.model import TunnelApiStatus
from agent.core.observation import ChildState, IkeState
from agent.core.snapshot import ConnectionView, Snapshot, TunnelView

log = logging.getLogger(__name__)

PREFIX = "space_vpn_"
CONNECTION_LABELS = ("space", "vpn")
# The tunnel's public IP, never charon's unique ids, SPIs or reqids: those change on
# every rekey and would turn each rekey into a new series.
TUNNEL_LABELS = (*CONNECTION_LABELS, "tunnel", "tunnel_ip")
# Listed even while absent from the view, so a state's series exists at 0 and
# alerts like `..._ike_state{state="ESTABLISHED"} == 0` work without `absent()`.
IKE_STATES = tuple(s.value for s in (IkeState.ESTABLISHED, IkeState.CONNECTING, IkeState.REKEYING,
                                     IkeState.DELETING, IkeState.DOWN))
CHILD_STATES = tuple(s.value for s in (ChildState.INSTALLED, ChildState.REKEYING, ChildState.NONE))
# Failover kinds, exported at 0 before the first failover so rate() sees the first increase.
FAILOVER_REASONS = tuple(kind.value for kind in FailoverKind)
STAGES = tuple(stage.value for stage in Stage)
HA_STATES = tuple(state.value for state in HaState)
FAULT_STAGES = tuple(stage.value for stage in FaultStage)  # exported at 0 too, for rate() and alerts
API_UP = {TunnelApiStatus.UP.value: 1, TunnelApiStatus.DOWN.value: 0}  # UNKNOWN: no sample


class SnapshotCollector(Collector):
    """Builds every space_vpn_* family from one Snapshot read per scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snapshot = self._snapshot()
        yield from agent_families(snapshot)
        yield from connection_families(snapshot.connections)
        yield from tunnel_families(snapshot.connections)


def agent_families(snapshot: Snapshot) -> Iterator[Metric]:
    yield InfoMetricFamily(PREFIX + "build", "Agent and strongSwan (charon) versions.", value={
        "version": snapshot.agent_version, "strongswan_version": snapshot.charon_version})
    yield GaugeMetricFamily(PREFIX + "charon_up", "1 when charon answers on its VICI socket, else 0.",
                            value=int(snapshot.charon_reachable))
    yield GaugeMetricFamily(PREFIX + "ready", "1 once the agent's first reconcile pass has completed.",
                            value=int(snapshot.ready))
    # A loop that hangs keeps serving its last Snapshot: this timestamp exposes that.
    yield GaugeMetricFamily(PREFIX + "snapshot_timestamp_seconds",
                            "Unix time the agent's loop published the state these metrics show.",
                            value=snapshot.generated_at)
    if snapshot.pass_seconds is not None:
        yield GaugeMetricFamily(PREFIX + "pass_duration_seconds",
                                "Seconds the agent's last reconcile pass took (observe charon and the kernel, plan, "
                                "apply); absent before the first.", value=snapshot.pass_seconds)
    yield CounterMetricFamily(PREFIX + "reconcile_passes", "Reconcile passes the agent's loop completed since it "
                              "started (one a second, one every 10 s while every connection is steady, more "
                              "while anything changes).", value=snapshot.passes)
    yield from api_budget_families(snapshot)


def api_budget_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Per agent, not per connection: the rate-limit pool belongs to the account behind the
    agent's one token, and the poller polls every connection in one round on that pool.
    Absent while nothing is polled."""
    budget = snapshot.api_budget
    if budget is None:
        return
    if budget.remaining is not None:
        yield GaugeMetricFamily(PREFIX + "api_rate_limit_remaining",
                                "Platform API calls left in the rate-limit pool of the agent's Heroku account "
                                "(shared with its other API clients), as RateLimit-Remaining last said; a 429 "
                                "counts as 0.",
                                value=budget.remaining)
    yield GaugeMetricFamily(PREFIX + "api_poll_interval_seconds",
                            "Seconds the agent waits between two rounds of Platform API calls now.",
                            value=budget.poll_interval)
    yield GaugeMetricFamily(PREFIX + "api_poll_stretched",
                            "1 while a low Platform API budget makes the agent poll more slowly than configured, "
                            "else 0.", value=int(budget.stretched))


def connection_families(connections: tuple[ConnectionView, ...]) -> Iterator[Metric]:
    health = GaugeMetricFamily(PREFIX + "connection_health",
                               "Connection health: 0 ok, 1 degraded (redundancy lost), 2 down.",
                               labels=CONNECTION_LABELS)
    last_success = GaugeMetricFamily(PREFIX + "api_last_success_timestamp_seconds",
                                     "Unix time of the last good Platform API answer for the connection.",
                                     labels=CONNECTION_LABELS)
    api_errors = CounterMetricFamily(PREFIX + "api_errors_total",
                                     "Failed Platform API requests since start, by kind.",
                                     labels=(*CONNECTION_LABELS, "kind"))
    failovers = CounterMetricFamily(PREFIX + "failovers_total",
                                    "Traffic moves from one tunnel to the other since start, by reason.",
                                    labels=(*CONNECTION_LABELS, "reason"))
    stage = GaugeMetricFamily(PREFIX + "connection_stage",
                              "1 for the connection's stage at Heroku (waiting, active, failed, gone...), 0 for the others.",
                              labels=(*CONNECTION_LABELS, "stage"))
    errors = CounterMetricFamily(PREFIX + "connection_errors_total",
                                 "Unexpected errors while planning or applying the connection since start, by stage "
                                 "(plan, apply): the agent left its tunnels as they were and went on with the others.",
                                 labels=(*CONNECTION_LABELS, "stage"))
    generation = GaugeMetricFamily(PREFIX + "settings_generation",
                                   "Generation of the far end's settings: 1 for the first seen, +1 for each change.",
                                   labels=CONNECTION_LABELS)
    ha = GaugeMetricFamily(PREFIX + "ha_state",
                           "HA pair (ha.enabled): 1 for this node's state for the connection (master runs the "
                           "tunnels; backup and fault stand by), 0 for the others. Absent without ha.",
                           labels=(*CONNECTION_LABELS, "state"))
    for conn in connections:
        labels = [conn.space, conn.vpn]
        health.add_metric(labels, int(conn.health))
        if conn.ha != "off":
            for name in HA_STATES:
                ha.add_metric([*labels, name], int(conn.ha == name))
        for name in STAGES:
            stage.add_metric([*labels, name], int(conn.stage == name))
        generation.add_metric(labels, conn.generation)
        if conn.api_last_success is not None:
            last_success.add_metric(labels, conn.api_last_success)
        errors_by_kind = {kind: 0 for kind in API_ERROR_KINDS} | conn.api_errors
        for kind, count in sorted(errors_by_kind.items()):
            api_errors.add_metric([*labels, kind], count)
        counts = {reason: 0 for reason in FAILOVER_REASONS} | conn.failover_counts
        for reason, count in sorted(counts.items()):
            failovers.add_metric([*labels, reason], count)
        for name in FAULT_STAGES:
            errors.add_metric([*labels, name], conn.connection_errors.get(name, 0))
    yield from (health, stage, generation, last_success, api_errors, failovers, errors)
    if any(conn.ha != "off" for conn in connections):
        yield ha


def tunnel_families(connections: tuple[ConnectionView, ...]) -> Iterator[Metric]:
    families = TunnelFamilies()
    for conn in connections:
        for tunnel in conn.tunnels:
            families.add(conn, tunnel)
    yield from families.all()


class TunnelFamilies:
    """The per-tunnel families of one scrape, filled tunnel by tunnel."""

    def __init__(self) -> None:
        self.configured = _gauge("tunnel_configured", "1 for every tunnel of a configured connection, up or not.")
        self.ike_state = _gauge("tunnel_ike_state", "1 for the tunnel's current IKE SA state, 0 for the others.",
                                "state")
        self.child_state = _gauge("tunnel_child_state", "1 for the tunnel's current CHILD_SA state, 0 for the others.",
                                  "state")
        self.active = _gauge("tunnel_active", "1 when the agent sends traffic through this tunnel, else 0.")
        self.api_up = _gauge("tunnel_api_up", "Platform API tunnel status: 1 UP, 0 DOWN (maintenance); absent when "
                                              "unknown.")
        self.established = _gauge("tunnel_established_timestamp_seconds",
                                  "Unix time the tunnel's current IKE SA was established.")
        self.rx_bytes = _counter("tunnel_receive_bytes_total", "Bytes received through the tunnel since start.")
        self.tx_bytes = _counter("tunnel_transmit_bytes_total", "Bytes sent through the tunnel since start.")
        self.rx_packets = _counter("tunnel_receive_packets_total", "Packets received through the tunnel since start.")
        self.tx_packets = _counter("tunnel_transmit_packets_total", "Packets sent through the tunnel since start.")
        self.last_inbound = _gauge("tunnel_last_inbound_seconds",
                                   "Seconds since the tunnel's CHILD_SA last received a packet.")
        self.probe_rtt = _gauge("tunnel_probe_rtt_seconds", "Round-trip time of the last answered data-path probe.")
        self.probes = _counter("tunnel_probes_total", "Data-path probes sent through the tunnel since start.")
        self.probe_failures = _counter("tunnel_probe_failures_total",
                                       "Data-path probes through the tunnel that got no answer, since start.")
        self.drained = _gauge("tunnel_drained", "1 while an operator keeps traffic away from the tunnel "
                                                "(agentctl drain), else 0.")
        self.initiates = _counter("tunnel_initiates_total", "IKE SA initiations of the tunnel since start, by result.",
                                  "result")

    def all(self) -> list[Metric]:
        return list(vars(self).values())

    def add(self, conn: ConnectionView, tunnel: TunnelView) -> None:
        labels = [conn.space, conn.vpn, str(tunnel.number), tunnel.ip]
        self.configured.add_metric(labels, 1)
        _add_states(self.ike_state, labels, IKE_STATES, tunnel.ike_state)
        _add_states(self.child_state, labels, CHILD_STATES, tunnel.child_state)
        self.active.add_metric(labels, int(tunnel.role == TunnelRole.ACTIVE))
        if tunnel.api_status in API_UP:
            self.api_up.add_metric(labels, API_UP[tunnel.api_status])
        established_at = tunnel.established_at
        if established_at is not None:
            self.established.add_metric(labels, established_at)
        self.rx_bytes.add_metric(labels, _total(tunnel, "bytes_in"))
        self.tx_bytes.add_metric(labels, _total(tunnel, "bytes_out"))
        self.rx_packets.add_metric(labels, _total(tunnel, "packets_in"))
        self.tx_packets.add_metric(labels, _total(tunnel, "packets_out"))
        if tunnel.last_inbound_seconds is not None:
            self.last_inbound.add_metric(labels, tunnel.last_inbound_seconds)
        if tunnel.probe_rtt_ms is not None:
            self.probe_rtt.add_metric(labels, tunnel.probe_rtt_ms / 1000)
        self.probes.add_metric(labels, tunnel.probe_sent)
        self.probe_failures.add_metric(labels, tunnel.probe_lost)
        self.drained.add_metric(labels, int(tunnel.drained))
        for result, count in sorted(tunnel.initiates.items()):
            self.initiates.add_metric([*labels, result], count)


def _gauge(name: str, documentation: str, *extra_labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=(*TUNNEL_LABELS, *extra_labels))


def _counter(name: str, documentation: str, *extra_labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, documentation, labels=(*TUNNEL_LABELS, *extra_labels))


def _add_states(family: GaugeMetricFamily, labels: list[str], known: tuple[str, ...], current: str) -> None:
    # A state charon reports that the list lacks still shows, rather than every state at 0.
    states = known if current in known or not current else (*known, current)
    for state in states:
        family.add_metric([*labels, state], int(state == current))


def _total(tunnel: TunnelView, name: str) -> int:
    """The loop's running total across CHILD_SAs (charon's own restart per CHILD_SA)."""
    return getattr(tunnel, f"{name}_total")


# Prometheus scrapes with a timeout of 10 s by default; a scrape is one short request.
LIMITS = Limits(max_clients=16, request_deadline=3.0, connection_deadline=10.0, max_request=8192)
_TOO_LARGE = b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n"
_BUSY = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"


class MetricsServer:
    """Serves the agent's own registry over HTTP: prometheus_client's WSGI app (the same
    exposition as its start_http_server) behind a BoundedServer instead of a thread per
    client."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Snapshot], limits: Limits = LIMITS):
        self._host = host
        self._port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))
        ProcessCollector(registry=self.registry)  # process_* (CPU, memory, fds) of the agent
        self._limits = limits
        self._server: BoundedServer | None = None
        self._wsgi: _WsgiHost | None = None

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (port 0 asks the kernel for a free one)."""
        return self._server.listener.getsockname()[1] if self._server is not None else self._port

    def start(self) -> None:
        try:
            listener = _listen(self._host, self._port)
        except OSError as e:
            raise OSError(e.errno, f"metrics.listen {self.address}: cannot serve /metrics: "
                                   f"{e.strerror or e}") from e
        self._wsgi = _WsgiHost(make_wsgi_app(self.registry), listener)
        self._server = BoundedServer(listener, "metrics", _head_is_complete, self._answer, busy=_BUSY,
                                     limits=self._limits)
        self._server.start()
        log.info("metrics on http://%s/metrics", self.address)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        self._server = None

    def _answer(self, client: Client) -> None:
        if len(client.request) > self._limits.max_request:
            client.send(_TOO_LARGE)
            return
        handler = _BufferedHandler(client, self._wsgi)
        client.send(handler.wfile.getvalue())


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, of the family the host asks for (as
    prometheus_client picks it)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(64)
    except OSError:
        listener.close()
        raise
    return listener


def _head_is_complete(request: bytes) -> bool:
    return b"\r\n\r\n" in request or b"\n\n" in request


class _WsgiHost:
    """What wsgiref's request handler needs of its server: the app and the base environ."""

    def __init__(self, app: Callable, listener: socket.socket):
        host, port = listener.getsockname()[:2]
        self._app = app
        self.base_environ = {"SERVER_NAME": socket.getfqdn(host), "GATEWAY_INTERFACE": "CGI/1.1",
                             "SERVER_PORT": str(port), "REMOTE_HOST": "", "CONTENT_LENGTH": "",
                             "SCRIPT_NAME": ""}

    def get_app(self) -> Callable:
        return self._app


class _BufferedHandler(WSGIRequestHandler):
    """wsgiref's handler over a request already read and an answer kept in memory: the
    BoundedServer did the reading and sends the answer within the client's deadline."""

    def __init__(self, client: Client, host: _WsgiHost):
        self._client = client
        super().__init__(client.sock, client.address, host)

    def setup(self) -> None:
        self.rfile = io.BytesIO(self._client.request)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        pass

    def log_message(self, format: str, *args: object) -> None:
        pass  # like prometheus_client: no line per scrape
