"""The loop: the one owner of state. It drains its inbox (charon events, API answers,
probe results, control requests, signals) into the loop state, then runs one pass:
observe, plan (one pure function over the whole state), apply, publish a Snapshot.
Every pass re-derives everything. A pass runs when the last plan asks (core/pace: once a
second, every 10 s while every connection is steady, sooner while an IKE request is in
flight), and at once after any message that may change a decision; messages that cannot
(an answered probe of a healthy tunnel, a 304, the split-brain guard's look finding no
one else) wait for it (loop_state.quiet).

Failures are contained: one connection whose planning or applying raises is logged by
name, counted and shown in its verdict while the others go on (core/faults); a pass that
fails as a whole is logged and shown, and the loop goes on. The loop says it is alive
(`on_alive`: the systemd watchdog) after every round, whatever its passes came to.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections.abc import Callable
from dataclasses import replace

from agent import __version__
from agent.adapters.address_watch import AddressesChanged
from agent.adapters.vip_guard import VipProbed
from agent.adapters.charon import CharonConnected, CharonDisconnected, CharonEvent
from agent.config import AgentConfig, redacted
from agent.core.ha import HaNotice, HaState
from agent.core.health import ProbeResult, ProbeTarget
from agent.core.durations import format_duration
from agent.core.faults import ConnectionFault
from agent.core.lifecycle import Stage, life_of
from agent.core.memory import ConnectionRecord
from agent.core.model import object_name
from agent.core.pace import TICK
from agent.core.pass_plan import PassInputs, PassPlan, connection_selector_problem, plan_pass
from agent.core.snapshot import ConnectionView, Health, Snapshot
from agent.core.text import one_line
from agent.core.views import api_budget_view, connection_view, ha_view
from agent.daemon.edges import Edges, Outcomes
from agent.daemon.fault_log import FaultLog
from agent.daemon.loop_state import (
    LoopState,
    charon_gone,
    records_for,
    quiet,
    tunnels_start_over,
    with_api_answer,
    with_api_failure,
    with_api_pace,
    with_drain,
    with_probe_result,
)
from agent.daemon.messages import ApiAnswer, ApiFailure, ApiPace, ControlRequest, Reload, Stop, ThreadCrashed
from agent.daemon.ports import CachePort

log = logging.getLogger(__name__)

MAX_PASS_ERROR = 300  # characters of a failed pass's error in status
MAX_CACHE_ERROR = 500  # characters of a failed cache write in status (it names state_dir)


class Controller:
    def __init__(
        self,
        config: AgentConfig,
        edges: Edges,
        cache: CachePort,
        *,
        route_unsupported: str | None,
        reload_config: Callable[[], AgentConfig],
        on_config: Callable[[AgentConfig], bool] = lambda c: True,  # True: polling starts over
        on_pass: Callable[[Snapshot], None] = lambda s: None,
        on_probe_targets: Callable[[list[ProbeTarget]], None] = lambda t: None,
        on_alive: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()  # put() is signal-safe
        self._edges = edges
        self._cache = cache
        self._route_unsupported = route_unsupported
        self._reload_config = reload_config
        self._on_config = on_config
        self._on_pass = on_pass
        self._on_probe_targets = on_probe_targets
        self._on_alive = on_alive
        self._faults = FaultLog()
        self._pass_error: str | None = None  # the last pass failed as a whole
        self._cache_errors: dict[str, str] = {}  # by connection key: its answer could not be cached
        self._probe_targets: tuple[ProbeTarget, ...] = ()
        self._forgotten: set[str] = set()  # keys whose deleted connection was forgotten (cache removed)
        self._pass_at = clock()  # monotonic s the next pass is due (the first: at once)
        self._pass_wanted = False  # a message since the last pass calls for one now
        self._refused: dict[str, str] = {}  # by key: the selector problem logged last
        self._pass_seconds: float | None = None  # how long the last complete pass took
        self._passes = 0  # complete passes since start
        self._next_pass_in: float | None = None  # as the last complete pass planned it
        self._clock = clock
        self._wall = wall
        self._rand = rand
        self._started_at = wall()
        self.state = LoopState(config, records_for(config, {}, cache, route_unsupported))
        self.snapshot = self._build_snapshot()

    # -- inbox ---------------------------------------------------------------------
    def post(self, message: object) -> None:
        self.inbox.put(message)

    def run(self) -> int:
        """Loop until Stop. Returns the process exit code."""
        while True:
            code = self.round()
            if code is not None:
                return code

    def round(self) -> int | None:
        """One turn: wait for a message until the next pass is due, take in every message
        waiting, then pass if one of them calls for it or its time has come. Returns the
        exit code once told to stop, else None."""
        try:
            message = self.inbox.get(timeout=max(0.0, self._pass_at - self._clock()))
        except queue.Empty:
            message = None
        try:
            while message is not None:
                if not self.handle(message):
                    log.info("stopping; tunnels stay up")
                    return 0
                message = self._next_pending()
            if self._pass_wanted or self._clock() >= self._pass_at:
                self.reconcile_pass()
        except Exception as e:  # one bad pass must not end the daemon
            log.exception("reconcile pass failed; continuing")
            self._publish_failure(e)
        # Alive: this thread came round, whatever the pass did (a hung pass never gets here).
        self._on_alive()
        return None

    def _publish_failure(self, error: Exception) -> None:
        """Status says that passes fail (the Snapshot would go stale without a word)."""
        self._pass_error = one_line(f"reconcile pass failed ({type(error).__name__}: {error}); "
                                    f"retried every pass, see the agent's log", MAX_PASS_ERROR)
        try:
            self.snapshot = self._build_snapshot()
        except Exception:
            log.exception("cannot publish the state after a failed pass")

    def _next_pending(self) -> object | None:
        try:
            return self.inbox.get_nowait()
        except queue.Empty:
            return None

    def handle(self, message: object) -> bool:
        """Take one inbox message into the state. False means: stop the loop."""
        state = self.state
        if not quiet(state, message):
            self._pass_wanted = True
        match message:
            case Stop():
                return False
            case CharonEvent(kind=kind, names=names, up=up):
                # Nothing to store: the pass that follows looks at charon afresh (in route
                # mode the event thread may already have moved a route: FastReroute).
                log.debug("charon event %s %s %s", kind, ",".join(names), "up" if up else "down")
            case AddressesChanged():
                pass  # the pass that follows reads the addresses afresh (an HA virtual address)
            case VipProbed(address=address, probe=probe):
                state.vip_probes[address] = probe  # the split-brain guard's latest look
            case CharonConnected():
                log.info("VICI event session connected; (re)loading all tunnels")
                state.loaded.clear()
            case CharonDisconnected(reason=reason):
                log.warning("charon went away: %s", reason)
                charon_gone(state)
            case ProbeResult(key=key):
                self._update(key, lambda r: with_probe_result(r, message, state.charon))
            case ControlRequest(command=command, args=args, reply=reply, peer=peer):
                reply.put(self._on_control(command, args, peer))
            case ApiAnswer(key=key):
                self._update(key, lambda r: with_api_answer(r, message, self._clock(), self._wall()))
                answer, raw = message.result.answer, message.result.raw
                if key in state.records and answer is not None and answer.connection is not None and raw:
                    self._save_answer(state.records[key], raw)
            case ApiFailure(key=key):
                self._update(key, lambda r: with_api_failure(r, message, self._clock()))
            case ApiPace(pace=pace):
                state.api_pace = with_api_pace(state.api_pace, pace)
            case Reload():
                self._reload()
            case ThreadCrashed(name=name, error=error):
                log.error("thread %s crashed: %s", name, error)
            case _:
                log.warning("ignoring unknown inbox message %r", type(message).__name__)
        return True

    def _save_answer(self, record: ConnectionRecord, raw: dict) -> None:
        settings = record.settings
        try:
            self._cache.save(settings.space, settings.vpn, raw)
        except (OSError, ValueError) as e:  # the answer is used all the same; only a restart misses it
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            text = one_line(f"{settings.label}: cannot cache the Platform API's answer in {self.state.config.state_dir} "
                            f"({why}): the tunnels run on it, but a restart while the API is unreachable would "
                            f"start without it; free space or fix the permissions of state_dir", MAX_CACHE_ERROR)
            if self._cache_errors.get(record.key) != text:
                log.error("%s", text)
            self._cache_errors[record.key] = text
            return
        if self._cache_errors.pop(record.key, None) is not None:
            log.info("%s: the Platform API's answer is cached again", settings.label)

    def _agent_errors(self) -> tuple[str, ...]:
        """Agent-wide problems for status: a refused reload, a failing pass, answers not cached."""
        state = self.state
        cache = tuple(text for key, text in self._cache_errors.items() if key in state.records)
        return (*state.errors, *((self._pass_error,) if self._pass_error else ()), *cache)

    def _update(self, key: str, change: Callable[[ConnectionRecord], ConnectionRecord]) -> None:
        record = self.state.records.get(key)
        if record is not None:  # a message for a connection a reload removed
            self.state.records[key] = change(record)

    # -- config and control ------------------------------------------------------------
    def _reload(self) -> None:
        state = self.state
        try:
            config = self._reload_config()
            records = records_for(config, state.records, self._cache, self._route_unsupported)
        except Exception as e:  # keep running with the old config
            log.error("config reload failed, keeping the running config: %s", e)
            state.errors = (f"config reload failed: {e}",)
            return
        state.errors = ()
        state.config, state.records = config, records
        if self._on_config(config):
            state.api_pace = None  # the poller starts over; its first round says its pace
        log.info("config reloaded: %d connection(s)", len(config.connections))

    def _on_control(self, command: str, args: object, peer: str) -> tuple[bool, object]:
        """drain N / undrain N: traffic leaves (or may return to) tunnel N.
        show-config: the running config, secrets left out (file paths only)."""
        if command == "show-config":
            return True, redacted(self.state.config)
        if not isinstance(args, dict):  # the server checks; a bad message must not cost a pass
            return False, f"arguments must be an object, got {type(args).__name__}"
        if command == "ha":
            return self._on_ha(args.get("state"), peer)
        try:
            record = self._control_target(args.get("connection"))
            tunnel = args.get("tunnel")
            record = with_drain(record, command, tunnel)
        except ValueError as e:
            return False, str(e)
        self.state.records[record.key] = record
        label = record.settings.label
        log.warning("%s: tunnel %d %s by the operator%s", label, tunnel,
                    "drained" if command == "drain" else "undrained", f" ({peer})" if peer else "")
        return True, {"connection": label, "tunnel": tunnel, "drained": sorted(record.memory.drained)}

    def _on_ha(self, state: object, peer: str) -> tuple[bool, object]:
        """keepalived's notify: the newer of it and the address's last change decides
        (core/ha); the pass that follows acts on it at once."""
        if not self.state.config.ha.enabled:
            return False, "ha is not enabled in the config (ha: {enabled: true})"
        try:
            ha = HaState(state)
        except ValueError:
            return False, f"state must be one of {', '.join(HaState)}"
        self.state.ha_notice = HaNotice(ha, self._clock())
        log.warning("ha: keepalived says this node is %s%s", ha.value, f" ({peer})" if peer else "")
        return True, {"state": ha.value}

    def _control_target(self, label: object) -> ConnectionRecord:
        records = list(self.state.records.values())
        names = ", ".join(r.settings.label for r in records)
        if label is not None and not isinstance(label, str):
            raise ValueError(f"connection must be a name such as SPACE/VPN, got {type(label).__name__}")
        if label is None:
            if len(records) != 1:
                raise ValueError(f"several connections ({names}): name one with --connection SPACE/VPN")
            return records[0]
        found = next((r for r in records if r.settings.label == label), None)
        if found is None:
            raise ValueError(f"no connection {label} (configured: {names})")
        return found

    # -- one pass --------------------------------------------------------------------
    def reconcile_pass(self) -> None:
        """Observe, plan over the whole state, apply once, publish (with how long the
        pass took until then, on the loop's clock)."""
        began = self._clock()
        # Set first: a pass that raises is tried again at the next tick, or at a message.
        self._pass_wanted, self._pass_at = False, began + TICK
        state, edges = self.state, self._edges
        since = edges.reroutes_fired()
        plan = self._plan()
        setup_faults: list[ConnectionFault] = []
        if plan.needs_fresh_observation:
            setup = edges.apply_setup(plan.setup)
            self._record(setup)
            setup_faults = setup.faults
            tunnels_start_over(state, plan.starting_over)
            plan = self._plan()  # setup still wanted after this waits for the next pass
        outcomes = Outcomes()
        # Armed before the pass acts: a child it closes itself (a selector roll's old one)
        # must meet the plan that knows its successor, not the last pass's.
        outcomes.faults += edges.arm_reroutes(plan.reroutes, state.net, since)
        if state.charon.reachable:
            for step in plan.steps:
                edges.apply_step(step, since, outcomes)
        for step in plan.steps:
            state.records[step.key] = replace(state.records[step.key], memory=step.memory)
        self._record(outcomes)
        self._log_selector_problems()
        edges.sync_mss(dict(plan.mss_rules) if plan.mss_rules is not None else None)
        if state.config.ha.enabled:
            edges.sync_yield(plan.yielding)
        self._faults.note(state.records, plan.faults, setup_faults + outcomes.faults)
        if plan.probe_targets != self._probe_targets:
            self._probe_targets = plan.probe_targets
            self._on_probe_targets(list(plan.probe_targets))
        self._forget_deleted()
        self._pass_at = self._clock() + plan.next_pass_in
        state.ready = True
        self._pass_error = None
        self._pass_seconds = max(0.0, self._clock() - began)
        self._passes += 1
        self._next_pass_in = plan.next_pass_in
        self.snapshot = self._build_snapshot()
        self._on_pass(self.snapshot)

    def _forget_deleted(self) -> None:
        """A connection Heroku deleted long enough ago has its tunnels unloaded by the
        plan; its cached answer goes too, once, so a restart does not revive it."""
        now = self._clock()
        for record in self.state.records.values():
            settings = record.settings
            forgotten = life_of(record.far_end, settings, now).stage is Stage.FORGOTTEN
            if forgotten and record.key not in self._forgotten:
                log.error("%s: deleted at Heroku for %s: its tunnels are unloaded and its cached answer removed",
                          settings.label, format_duration(settings.forget_deleted_after))
                self._cache.discard(settings.space, settings.vpn)
                self._forgotten.add(record.key)
            elif not forgotten:
                self._forgotten.discard(record.key)

    def _plan(self) -> PassPlan:
        """Observe charon and the kernel, then plan the pass on that."""
        state, edges = self.state, self._edges
        state.charon, error = edges.observe_charon()
        if error is not None:
            if state.charon_error is None:
                log.warning("charon unreachable: %s", error)
            state.loaded.clear()
        state.charon_error = error
        state.net = edges.observe_net(state.net)
        return plan_pass(PassInputs(
            records=tuple(state.records.values()), charon=state.charon, net=state.net, loaded=dict(state.loaded),
            detected=self._detect_local_addresses(), now=self._clock(), wall_now=self._wall(),
            jitter={object_name(key, n): self._rand() for key in state.records for n in (1, 2)},
            ha_notice=state.ha_notice, vip_probes=dict(state.vip_probes),
        ))

    def _log_selector_problems(self) -> None:
        """Once per far-end answer that cannot be loaded as it is (IKEv1, several
        routable CIDRs), and once when that is over; status says it every pass."""
        for record in self.state.records.values():
            problem, before = connection_selector_problem(record), self._refused.get(record.key)
            if problem is not None and problem != before:
                log.error("%s: %s. This answer is not loaded into charon", record.settings.label, problem)
            elif problem is None and before is not None:
                log.info("%s: every routable CIDR can cross the tunnel now", record.settings.label)
            if problem is None:
                self._refused.pop(record.key, None)
            else:
                self._refused[record.key] = problem

    def _detect_local_addresses(self) -> dict[str, str | None]:
        """Our address towards tunnel 1, for connections that configure none (once)."""
        found = {}
        for record in self.state.records.values():
            vpn = record.far_end.vpn
            if record.settings.local_address or record.memory.local_address or vpn is None:
                continue
            try:
                found[record.key] = self._edges.detect_local_address(vpn.tunnel(1).ip)
            except Exception as e:  # one connection's far end must not stop the pass
                log.error("%s: finding our address towards tunnel 1 (%s) failed: %s: %s", record.settings.label,
                          vpn.tunnel(1).ip, type(e).__name__, e)
                found[record.key] = None
            if found[record.key] is None:
                log.error("%s: no route to tunnel 1 (%s); set local_address", record.settings.label, vpn.tunnel(1).ip)
        return found

    def _record(self, outcomes: Outcomes) -> None:
        state = self.state
        state.loaded.update(outcomes.loaded)
        for name in outcomes.unloaded:
            state.loaded.pop(name, None)
        for key, conn_name, result in outcomes.initiates:
            record = state.records[key]
            desired = record.memory.desired
            number = next((t.number for t in desired.tunnels if t.conn_name == conn_name), None) if desired else None
            if number is not None:
                state.records[key] = replace(record, memory=record.memory.with_initiate(number, result))

    # -- publishing ------------------------------------------------------------------
    def _build_snapshot(self) -> Snapshot:
        state = self.state
        connections = tuple(self._view(r) for r in state.records.values())
        return Snapshot(
            agent_version=__version__,
            started_at=self._started_at,
            generated_at=self._wall(),
            charon_reachable=state.charon.reachable,
            charon_version=state.charon.version,
            ready=state.ready,
            connections=connections,
            errors=self._agent_errors(),
            api_budget=api_budget_view(state.api_pace),
            ha=ha_view(state.config.ha.enabled, connections, state.ha_notice),
            pass_seconds=self._pass_seconds,
            passes=self._passes,
            next_pass_seconds=self._next_pass_in,
        )

    def _view(self, record: ConnectionRecord) -> ConnectionView:
        try:
            return connection_view(record, self.state.charon, self._clock(), self._wall())
        except Exception as e:  # one connection's status must not hide the others'
            log.exception("%s: cannot build its status", record.settings.label)
            settings = record.settings
            return ConnectionView(space=settings.space, vpn=settings.vpn, mode=settings.mode.value,
                                  mode_reason=settings.mode_reason, source=record.far_end.source,
                                  connection_status=record.far_end.connection_status, health=Health.DOWN,
                                  summary=one_line(f"status unavailable ({type(e).__name__}: {e}); "
                                                   f"see the agent's log", MAX_PASS_ERROR))

    @property
    def config(self) -> AgentConfig:
        return self.state.config
