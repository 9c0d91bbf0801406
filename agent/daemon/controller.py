"""The loop: the one owner of state. It drains its inbox (charon events, API answers,
control requests, signals), observes charon, asks the planner what to do, applies
that through the adapters and publishes a Snapshot. Every pass re-derives everything.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable

from agent import __version__
from agent.adapters.charon import CharonConnected, CharonDisconnected, CharonEvent
from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.probe import ProbeResult, ProbeTarget
from agent.config import AgentConfig, redacted, static_vpn_connection
from agent.core.connection_plan import current_probes
from agent.core.health import ProbeStats
from agent.core.model import ConnectionStatus
from agent.core.modes import resolve_mode
from agent.core.snapshot import Snapshot
from agent.daemon.messages import ApiAnswer, ApiFailure, ControlRequest, Reload, Stop, ThreadCrashed
from agent.daemon.reconciler import Reconciler
from agent.daemon.state import ConnectionRuntime, connection_view, probe_targets

log = logging.getLogger(__name__)

TICK = 1.0  # s between passes when nothing happens


class Controller:
    def __init__(
        self,
        config: AgentConfig,
        reconciler: Reconciler,
        cache: ConnectionCache,
        *,
        route_unsupported: str | None,
        reload_config: Callable[[], AgentConfig],
        on_config: Callable[[AgentConfig], None] = lambda c: None,
        on_pass: Callable[[Snapshot], None] = lambda s: None,
        on_probe_targets: Callable[[list[ProbeTarget]], None] = lambda t: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # put() is signal-safe
        self._reconciler = reconciler
        self._cache = cache
        self._route_unsupported = route_unsupported
        self._reload_config = reload_config
        self._on_config = on_config
        self._on_pass = on_pass
        self._on_probe_targets = on_probe_targets
        self._probe_targets: list[ProbeTarget] = []
        self._clock = clock
        self._wall = wall
        self._started_at = wall()
        self._errors: tuple[str, ...] = ()
        self._ready = False
        self._apply_config(config)
        self.snapshot = self._build_snapshot()

    # -- inbox ---------------------------------------------------------------------
    def post(self, message: object) -> None:
        self.inbox.put(message)

    def run(self) -> int:
        """Loop until Stop. Returns the process exit code."""
        while True:
            try:
                message = self.inbox.get(timeout=TICK)
            except queue.Empty:
                message = None
            try:
                while message is not None:
                    if not self.handle(message):
                        log.info("stopping; tunnels stay up")
                        return 0
                    message = self._next_pending()
                self.reconcile_pass()
            except Exception:  # one bad pass must not end the daemon
                log.exception("reconcile pass failed; continuing")

    def _next_pending(self) -> object | None:
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            return None

    def handle(self, message: object) -> bool:
        """Take one inbox message into the state. False means: stop the loop."""
        match message:
            case Stop():
                return False
            case CharonEvent(kind=kind, names=names, up=up):
                # Nothing to store: the pass that follows looks at charon afresh (in route
                # mode the event thread may already have moved a route: FastReroute).
                log.debug("charon event %s %s %s", kind, ",".join(names), "up" if up else "down")
            case CharonConnected():
                log.info("VICI event session connected; (re)loading all tunnels")
                self._reconciler.forget_loaded()
            case CharonDisconnected(reason=reason):
                log.warning("charon went away: %s", reason)
                self._reconciler.forget_loaded()
                for runtime in self._runtimes.values():
                    runtime.timing = {}  # its SAs went with it: the tunnels start over, start-up grace included
            case ProbeResult():
                self._on_probe_result(message)
            case ControlRequest(command=command, args=args, reply=reply):
                reply.put(self._on_control(command, args))
            case ApiAnswer():
                self._on_api_answer(message)
            case ApiFailure():
                self._on_api_failure(message)
            case Reload():
                self._reload()
            case ThreadCrashed(name=name, error=error):
                log.error("thread %s crashed: %s", name, error)
            case _:
                log.warning("ignoring unknown inbox message %r", type(message).__name__)
        return True

    # -- config and API --------------------------------------------------------------
    def _apply_config(self, config: AgentConfig) -> None:
        old = getattr(self, "_runtimes", {})
        runtimes: dict[str, ConnectionRuntime] = {}
        for conn in config.connections:
            mode, reason = resolve_mode(conn.mode, self._route_unsupported)
            runtime = ConnectionRuntime(config=conn, mode=mode, mode_reason=reason)
            previous = old.get(conn.key)
            if previous is not None and previous.config.static is None and conn.static is None:
                # Same Heroku connection: keep what we know of the far end.
                for attr in ("vpn", "source", "connection_status", "api_last_success", "timing", "probes",
                             "failover", "inbound", "drained", "failovers", "failover_counts",
                             "traffic", "initiates", "api_errors"):
                    setattr(runtime, attr, getattr(previous, attr))
            elif conn.static is not None:
                runtime.vpn, runtime.source, runtime.connection_status = static_vpn_connection(conn), "static", "active"
            else:
                cached = self._cache.load(conn.space, conn.vpn)
                if cached is not None:
                    log.info("%s: using the cached VPN connection until the API answers", conn.label)
                    runtime.vpn, runtime.source = cached, "cache"
                    runtime.connection_status = cached.status.value
            runtimes[conn.key] = runtime
        self._runtimes = runtimes
        self._config = config

    def _reload(self) -> None:
        try:
            config = self._reload_config()
            for conn in config.connections:
                resolve_mode(conn.mode, self._route_unsupported)
        except Exception as e:  # keep running with the old config
            log.error("config reload failed, keeping the running config: %s", e)
            self._errors = (f"config reload failed: {e}",)
            return
        self._errors = ()
        self._apply_config(config)
        self._on_config(config)
        log.info("config reloaded: %d connection(s)", len(config.connections))

    def _on_api_answer(self, answer: ApiAnswer) -> None:
        runtime = self._runtimes.get(answer.key)
        if runtime is None:
            return
        label = runtime.config.label
        if runtime.api_error:
            log.info("%s: Platform API reachable again", label)
        runtime.api_error = runtime.api_error_kind = None
        runtime.api_last_success = self._wall()
        result = answer.result
        if result.connection is None:  # 304 Not Modified: what we have is current
            return
        vpn = result.connection
        runtime.connection_status = vpn.status.value
        if vpn.status is not ConnectionStatus.ACTIVE:
            log.info("%s: VPN connection is %s %s", label, vpn.status.value, vpn.status_message)
            return
        if runtime.vpn != vpn:
            log.info("%s: VPN connection updated from the Platform API", label)
        runtime.vpn, runtime.source = vpn, "api"
        if result.raw is not None:
            self._cache.save(runtime.config.space, runtime.config.vpn, result.raw)

    def _on_probe_result(self, result: ProbeResult) -> None:
        runtime = self._runtimes.get(result.key)
        if runtime is None:
            return
        if runtime.desired is None:
            return
        sas = self._reconciler.charon_state.tunnel(runtime.desired.tunnel(result.tunnel).conn_name)
        if sas.established_ike is None:
            return  # no SA to blame or credit
        sa_id = sas.established_ike.uniqueid
        previous = current_probes(runtime.probes.get(result.tunnel), sas) or ProbeStats(sa_id=sa_id)
        stats = previous.record(result.ok, result.rtt, result.sent_at)
        failures = runtime.config.probe.failures
        if stats.consecutive_failures == failures:
            log.warning("%s: tunnel %d lost %d probes in a row", runtime.config.label, result.tunnel, failures)
        elif result.ok and previous.consecutive_failures >= failures:
            log.info("%s: tunnel %d answers probes again", runtime.config.label, result.tunnel)
        runtime.probes[result.tunnel] = stats

    def _on_control(self, command: str, args: dict) -> tuple[bool, object]:
        """drain N / undrain N: traffic leaves (or may return to) tunnel N.
        show-config: the running config, secrets left out (file paths only)."""
        if command == "show-config":
            return True, redacted(self._config)
        try:
            runtime = self._control_target(args.get("connection"))
            tunnel = args.get("tunnel")
            if tunnel not in (1, 2):
                raise ValueError(f"tunnel must be 1 or 2, got {tunnel!r}")
            if command == "drain":
                if 3 - tunnel in runtime.drained:
                    raise ValueError(f"tunnel {3 - tunnel} is drained already: draining both would leave traffic "
                                     f"nowhere to go; `agentctl undrain {3 - tunnel}` first")
                runtime.drained.add(tunnel)
            elif command == "undrain":
                runtime.drained.discard(tunnel)
            else:
                raise ValueError(f"unknown command {command!r}")
        except ValueError as e:
            return False, str(e)
        log.warning("%s: tunnel %d %s by the operator", runtime.config.label, tunnel,
                    "drained" if command == "drain" else "undrained")
        return True, {"connection": runtime.config.label, "tunnel": tunnel, "drained": sorted(runtime.drained)}

    def _control_target(self, label: str | None) -> ConnectionRuntime:
        if label is None:
            if len(self._runtimes) != 1:
                names = ", ".join(r.config.label for r in self._runtimes.values())
                raise ValueError(f"several connections ({names}): name one with --connection SPACE/VPN")
            return next(iter(self._runtimes.values()))
        for runtime in self._runtimes.values():
            if runtime.config.label == label:
                return runtime
        names = ", ".join(r.config.label for r in self._runtimes.values())
        raise ValueError(f"no connection {label} (configured: {names})")

    def _on_api_failure(self, failure: ApiFailure) -> None:
        runtime = self._runtimes.get(failure.key)
        if runtime is None:
            return
        if failure.message != runtime.api_error:
            log.error("%s: Platform API: %s (tunnels are left as they are)", runtime.config.label, failure.message)
        runtime.api_error, runtime.api_error_kind = failure.message, failure.kind
        runtime.api_errors[failure.kind] = runtime.api_errors.get(failure.kind, 0) + 1

    # -- reconcile -------------------------------------------------------------------
    def reconcile_pass(self) -> None:
        """Observe, re-derive every action from the whole state, apply, publish."""
        self._reconciler.run(list(self._runtimes.values()), self._clock())
        targets = probe_targets(list(self._runtimes.values()))
        if targets != self._probe_targets:
            self._probe_targets = targets
            self._on_probe_targets(targets)
        self._ready = True
        self.snapshot = self._build_snapshot()
        self._on_pass(self.snapshot)

    # -- publishing ------------------------------------------------------------------
    def _build_snapshot(self) -> Snapshot:
        charon = self._reconciler.charon_state
        return Snapshot(
            agent_version=__version__,
            started_at=self._started_at,
            generated_at=self._wall(),
            charon_reachable=charon.reachable,
            charon_version=charon.version,
            ready=self._ready,
            connections=tuple(connection_view(r, charon, self._wall()) for r in self._runtimes.values()),
            errors=self._errors,
        )

    @property
    def config(self) -> AgentConfig:
        return self._config
