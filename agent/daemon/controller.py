"""The loop: the one owner of state. It drains its inbox (charon events, API answers,
control requests, signals), observes charon, asks the planner what to do, applies
that through the adapters and publishes a Snapshot. Every pass re-derives everything.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections.abc import Callable
from dataclasses import replace

from agent import __version__
from agent.adapters.charon import (
    CharonClient,
    CharonConnected,
    CharonDisconnected,
    CharonError,
    CharonEvent,
)
from agent.adapters.connection_cache import ConnectionCache
from agent.config import AgentConfig, static_vpn_connection
from agent.core import planner
from agent.core.desired import desired_connection
from agent.core.model import ConnectionStatus, Mode
from agent.core.observation import CharonState
from agent.core.snapshot import Snapshot
from agent.daemon.messages import ApiAnswer, ApiFailure, Reload, Stop, ThreadCrashed
from agent.daemon.state import ConnectionRuntime, connection_view

log = logging.getLogger(__name__)

TICK = 1.0  # s between passes when nothing happens
INITIATE_TIMEOUT_MS = -1  # return at once: charon negotiates on, events tell us the outcome
TERMINATE_TIMEOUT_MS = 3000


def resolve_mode(wanted: Mode) -> tuple[Mode, str]:
    """Route mode arrives with XFRM interface support; until then auto means policy."""
    if wanted is Mode.ROUTE:
        raise ValueError("mode: route is not supported by this version yet; use policy or auto")
    if wanted is Mode.AUTO:
        return Mode.POLICY, "auto: route mode not available in this version, using policy"
    return Mode.POLICY, "configured"


class Controller:
    def __init__(
        self,
        config: AgentConfig,
        charon: CharonClient,
        cache: ConnectionCache,
        *,
        detect_local_address: Callable[[str], str | None],
        reload_config: Callable[[], AgentConfig],
        on_config: Callable[[AgentConfig], None] = lambda c: None,
        on_pass: Callable[[Snapshot], None] = lambda s: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # put() is signal-safe
        self._charon = charon
        self._cache = cache
        self._detect_local_address = detect_local_address
        self._reload_config = reload_config
        self._on_config = on_config
        self._on_pass = on_pass
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self._started_at = wall()
        self._charon_state = CharonState(reachable=False)
        self._loaded: dict[str, str] = {}  # conn name -> fingerprint loaded by this process
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
            case CharonEvent(kind=kind, names=names):
                log.debug("charon event %s %s", kind, ",".join(names))
            case CharonConnected():
                log.info("VICI event session connected; (re)loading all tunnels")
                self._loaded.clear()
            case CharonDisconnected(reason=reason):
                log.warning("charon went away: %s", reason)
                self._loaded.clear()
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
            mode, reason = resolve_mode(conn.mode)
            runtime = ConnectionRuntime(config=conn, mode=mode, mode_reason=reason)
            previous = old.get(conn.key)
            if previous is not None and previous.config.static is None and conn.static is None:
                # Same Heroku connection: keep what we know of the far end.
                for attr in ("vpn", "source", "connection_status", "api_last_success", "active", "timing"):
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
                resolve_mode(conn.mode)
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

    def _on_api_failure(self, failure: ApiFailure) -> None:
        runtime = self._runtimes.get(failure.key)
        if runtime is None:
            return
        if failure.message != runtime.api_error:
            log.error("%s: Platform API: %s (tunnels are left as they are)", runtime.config.label, failure.message)
        runtime.api_error, runtime.api_error_kind = failure.message, failure.kind

    # -- reconcile -------------------------------------------------------------------
    def reconcile_pass(self) -> None:
        """Observe charon, re-derive every action from the whole state, apply, publish."""
        now = self._clock()
        self._charon_state = self._observe()
        if self._charon_state.reachable:
            for runtime in self._runtimes.values():
                runtime.desired = self._desired(runtime)
            self._reconcile(now)
        self._ready = True
        self.snapshot = self._build_snapshot()
        self._on_pass(self.snapshot)

    def _observe(self) -> CharonState:
        try:
            return self._charon.observe()
        except CharonError as e:
            if self._charon_state.reachable or not self._ready:
                log.warning("charon unreachable: %s", e)
            self._loaded.clear()
            return CharonState(reachable=False)

    def _desired(self, runtime: ConnectionRuntime):
        if runtime.vpn is None:
            return None
        if runtime.config.local_address:
            runtime.local_address = runtime.config.local_address
        elif runtime.local_address is None:
            runtime.local_address = self._detect_local_address(runtime.vpn.tunnel(1).ip)
            if runtime.local_address is None:
                log.error("%s: no route to tunnel 1 (%s); set local_address", runtime.config.label, runtime.vpn.tunnel(1).ip)
                return None
        return desired_connection(
            key=runtime.key,
            space=runtime.config.space,
            vpn=runtime.config.vpn,
            local_address=runtime.local_address,
            local_id=runtime.config.local_id,
            mode=runtime.mode,
            connection=runtime.vpn,
        )

    def _reconcile(self, now: float) -> None:
        desired = [r.desired for r in self._runtimes.values() if r.desired is not None]
        actions = planner.plan_objects(desired, set(self._runtimes), self._loaded, self._charon_state)
        changed = self._apply(actions, now, None)
        if changed:  # SAs were loaded or terminated: plan tunnels on fresh facts
            self._charon_state = self._observe()
            if not self._charon_state.reachable:
                return
        for runtime in self._runtimes.values():
            if runtime.desired is not None:
                self._reconcile_tunnels(runtime, now)

    def _reconcile_tunnels(self, runtime: ConnectionRuntime, now: float) -> None:
        conn = runtime.desired
        assert conn is not None
        charon = self._charon_state
        for tunnel in conn.tunnels:
            timing = runtime.timing.get(tunnel.conn_name, planner.TunnelTiming())
            up = charon.tunnel(tunnel.conn_name).ike_state == "ESTABLISHED"
            since = None if up else (timing.unestablished_since or now)
            runtime.timing[tunnel.conn_name] = replace(timing, unestablished_since=since)
        active = planner.choose_active(conn, charon, runtime.active, runtime.timing, now)
        if runtime.active is not None and active != runtime.active:
            log.warning("%s: tunnel %d is down, moving traffic to tunnel %d", conn.label, runtime.active, active)
        runtime.active = active
        for tunnel in conn.tunnels:
            if planner.reached_desired_state(charon.tunnel(tunnel.conn_name), tunnel.number == active):
                timing = runtime.timing[tunnel.conn_name]
                runtime.timing[tunnel.conn_name] = replace(timing, attempts=0, next_attempt_at=0.0)
        self._apply(planner.plan_policy_mode(conn, charon, active, runtime.timing, now), now, runtime)

    def _apply(self, actions: list[planner.Action], now: float, runtime: ConnectionRuntime | None) -> bool:
        changed = False
        for action in actions:
            try:
                self._apply_one(action)
                changed = changed or not isinstance(action, planner.INITIATES)
            except CharonError as e:
                log.warning("%s failed: %s", type(action).__name__, e)
            if runtime is not None and isinstance(action, planner.INITIATES):
                self._record_attempt(runtime, action.conn_name, now)
        return changed

    def _apply_one(self, action: planner.Action) -> None:
        charon = self._charon
        match action:
            case planner.LoadTunnel(connection=conn, number=number, fingerprint=fingerprint):
                log.info("%s: loading tunnel %d (%s)", conn.label, number, conn.tunnel(number).remote_ip)
                charon.load_tunnel(conn, number)
                self._loaded[conn.tunnel(number).conn_name] = fingerprint
            case planner.UnloadConn(conn_name=name):
                log.info("unloading %s: no longer configured", name)
                charon.unload_conn(name)
                self._loaded.pop(name, None)
            case planner.UnloadShared(shared_id=shared_id):
                charon.unload_shared(shared_id)
            case planner.InitiateChild(conn_name=name):
                log.info("initiating %s (IKE and CHILD_SA)", name)
                charon.initiate(name, child=True, timeout_ms=INITIATE_TIMEOUT_MS)
            case planner.InitiateIke(conn_name=name):
                log.info("initiating %s (IKE SA only: standby)", name)
                charon.initiate(name, child=False, timeout_ms=INITIATE_TIMEOUT_MS)
            case planner.TerminateChild(conn_name=name, child_uniqueid=child_id):
                log.info("%s: closing CHILD_SA #%s (standby keeps its IKE SA)", name, child_id)
                charon.terminate_child(child_id, timeout_ms=TERMINATE_TIMEOUT_MS)
            case planner.TerminateIke(conn_name=name, ike_uniqueid=ike_id):
                log.info("%s: terminating IKE SA #%s", name, ike_id)
                charon.terminate_ike(ike_id, timeout_ms=TERMINATE_TIMEOUT_MS)

    def _record_attempt(self, runtime: ConnectionRuntime, conn_name: str, now: float) -> None:
        timing = runtime.timing.get(conn_name, planner.TunnelTiming())
        attempts = timing.attempts + 1
        delay = planner.backoff_delay(attempts, self._rand())
        runtime.timing[conn_name] = replace(timing, attempts=attempts, next_attempt_at=now + delay)

    # -- publishing ------------------------------------------------------------------
    def _build_snapshot(self) -> Snapshot:
        charon = self._charon_state
        return Snapshot(
            agent_version=__version__,
            started_at=self._started_at,
            generated_at=self._wall(),
            charon_reachable=charon.reachable,
            charon_version=charon.version,
            ready=self._ready,
            connections=tuple(connection_view(r, charon) for r in self._runtimes.values()),
            errors=self._errors,
        )

    @property
    def config(self) -> AgentConfig:
        return self._config
