"""One reconcile pass, run by the loop: observe charon (and, in route mode, the kernel's
interfaces and routes), ask the pure planners, apply their actions through the
adapters. Everything is re-derived from the whole state each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

from agent.adapters.charon import CharonClient, CharonError
from agent.adapters.links import LinkError, LinkManager
from agent.adapters.mss_clamp import MssClamp, MssClampError
from agent.core import connection_plan, planner, route_planner
from agent.core.desired import DesiredConnection, desired_connection
from agent.core.health import TrafficTotals
from agent.core.modes import Mode
from agent.core.netstate import NetState, source_inside
from agent.core.observation import CharonState
from agent.daemon.fast_reroute import FastReroute
from agent.daemon.state import ConnectionRuntime

log = logging.getLogger(__name__)

INITIATE_TIMEOUT_MS = -1  # return at once: charon negotiates on, events tell us the outcome
TERMINATE_TIMEOUT_MS = 3000


class Reconciler:
    """Owned by the loop thread, like everything it touches."""

    def __init__(
        self,
        charon: CharonClient,
        links: LinkManager | None,
        mss: MssClamp | None,
        *,
        detect_local_address: Callable[[str], str | None],
        rand: Callable[[], float],
        wall: Callable[[], float] = time.time,
        connect_timeout: float = 5.0,
        reroute: FastReroute | None = None,
    ) -> None:
        self._wall = wall
        self._reroute = reroute
        self._pass_since = 0  # reroutes fired before this pass looked at anything
        self._connect_timeout = connect_timeout
        self._charon = charon
        self._links = links
        self._mss = mss
        self._detect_local_address = detect_local_address
        self._rand = rand
        self.charon_state = CharonState(reachable=False)
        self.net_state = NetState()
        self._loaded: dict[str, str] = {}  # conn name -> fingerprint loaded by this process
        self._announced_unreachable = False

    def forget_loaded(self) -> None:
        """charon restarted (or went away): everything must be loaded again."""
        self._loaded.clear()

    def run(self, runtimes: list[ConnectionRuntime], now: float) -> None:
        self._pass_since = self._reroute.fired if self._reroute is not None else 0
        self.charon_state = self._observe_charon()
        routed = [r for r in runtimes if r.mode is Mode.ROUTE]
        if self._links is not None:  # routes and interfaces, and our addresses (probe source)
            self.net_state = self._observe_net()
        for runtime in runtimes:
            runtime.desired = self._desired(runtime)
        if not self.charon_state.reachable:
            return
        desired = [r.desired for r in runtimes if r.desired is not None]
        if routed and self._links is not None:
            configured = [(r.key, r.config.vpn) for r in runtimes]
            actions = route_planner.plan_stale_interfaces(configured, self.net_state)
            for runtime in routed:
                if runtime.desired is not None:
                    actions += route_planner.plan_interfaces(runtime.desired, self.net_state)
            if self._apply_net(actions):
                self.net_state = self._observe_net()
            self._sync_mss(route_planner.mss_rules([r.desired for r in routed if r.desired is not None]))
        keys = {r.key for r in runtimes}
        if self._apply(planner.plan_objects(desired, keys, self._loaded, self.charon_state), now, None):
            self.charon_state = self._observe_charon()  # plan tunnels on fresh facts
            if not self.charon_state.reachable:
                return
        for runtime in runtimes:
            if runtime.desired is not None:
                self._reconcile_connection(runtime, now)
        if self._reroute is not None:
            plans = (route_planner.plan_reroute(r.desired, self.charon_state, r.active)
                     for r in routed if r.desired is not None)
            ifindex = {link.name: link.index for link in self.net_state.links.values()}
            self._reroute.arm([plan for plan in plans if plan is not None], ifindex, self._pass_since)

    # -- observing ---------------------------------------------------------------------
    def _observe_charon(self) -> CharonState:
        try:
            state = self._charon.observe()
        except CharonError as e:
            if not self._announced_unreachable:
                log.warning("charon unreachable: %s", e)
                self._announced_unreachable = True
            self._loaded.clear()
            return CharonState(reachable=False)
        self._announced_unreachable = False
        return state

    def _observe_net(self) -> NetState:
        assert self._links is not None
        try:
            return self._links.observe()
        except LinkError as e:
            log.warning("cannot read interfaces and routes: %s", e)
            return self.net_state

    def _desired(self, runtime: ConnectionRuntime) -> DesiredConnection | None:
        if runtime.vpn is None:
            return None
        config = runtime.config
        if config.local_address:
            runtime.local_address = config.local_address
        elif runtime.local_address is None:
            runtime.local_address = self._detect_local_address(runtime.vpn.tunnel(1).ip)
            if runtime.local_address is None:
                log.error("%s: no route to tunnel 1 (%s); set local_address", config.label, runtime.vpn.tunnel(1).ip)
                return None
        source = config.source_address or source_inside(tuple(runtime.vpn.routable_cidrs), self.net_state.addresses)
        return desired_connection(
            key=runtime.key, space=config.space, vpn=config.vpn, local_address=runtime.local_address,
            local_id=config.local_id, mode=runtime.mode, connection=runtime.vpn, source_address=source,
            tunnel_mtu=config.tunnel_mtu, tcp_mss=config.tcp_mss,
        )

    # -- one connection ------------------------------------------------------------------
    def _reconcile_connection(self, runtime: ConnectionRuntime, now: float) -> None:
        conn = runtime.desired
        assert conn is not None
        decision = connection_plan.decide(conn, self.charon_state, self.net_state, runtime.inputs(self._connect_timeout),
                                          now, self._wall())
        runtime.apply_decision(decision, self._wall())
        for tunnel in conn.tunnels:
            totals = runtime.traffic.get(tunnel.number, TrafficTotals())
            runtime.traffic[tunnel.number] = totals.update(self.charon_state.tunnel(tunnel.conn_name).children)
        if decision.switch_reason:
            log.warning("%s: failover from tunnel %d to tunnel %d: %s", conn.label, decision.previous_active,
                        decision.failover.active, decision.switch_reason)
        self._apply(decision.charon_actions, now, runtime)
        if self._links is not None and self._apply_net(decision.net_actions):
            self.net_state = self._observe_net()

    # -- applying ----------------------------------------------------------------------
    def _apply(self, actions: list[planner.Action], now: float, runtime: ConnectionRuntime | None) -> bool:
        changed = False
        for action in actions:
            result = "accepted"
            try:
                self._apply_charon(action)
                changed = changed or not isinstance(action, planner.INITIATES)
            except CharonError as e:
                log.warning("%s failed: %s", type(action).__name__, e)
                result = "refused"
            if runtime is not None and isinstance(action, planner.INITIATES):
                self._record_attempt(runtime, action.conn_name, now)
                runtime.count_initiate(action.conn_name, result)
        return changed

    def _apply_charon(self, action: planner.Action) -> None:
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

    def _apply_net(self, actions: list[route_planner.RouteAction]) -> bool:
        assert self._links is not None or not actions
        if not actions:
            return False
        with self._net_guard() as current:
            if not current:
                log.debug("a fast reroute fired during this pass: its route changes wait for the next pass")
                return False
            for action in actions:
                try:
                    self._apply_link(action)
                except LinkError as e:
                    log.warning("%s failed: %s", type(action).__name__, e)
        return True

    def _net_guard(self) -> AbstractContextManager[bool]:
        return self._reroute.guard(self._pass_since) if self._reroute is not None else nullcontext(True)

    def _apply_link(self, action: route_planner.RouteAction) -> None:
        links = self._links
        assert links is not None
        match action:
            case route_planner.EnsureInterface(name=name, if_id=if_id, mtu=mtu):
                log.info("interface %s: if_id %d, mtu %d, up", name, if_id, mtu)
                links.ensure_interface(name, if_id, mtu)
            case route_planner.RemoveInterface(name=name):
                log.info("removing interface %s: its connection is no longer configured", name)
                links.remove_interface(name)
            case route_planner.SetRoute(dst=dst, ifname=ifname, metric=metric, src=src):
                log.info("route %s dev %s metric %d%s", dst, ifname, metric, f" src {src}" if src else "")
                links.set_route(dst, ifname, metric, src)
            case route_planner.DeleteRoute(dst=dst, ifname=ifname, metric=metric):
                log.info("deleting route %s dev %s metric %d", dst, ifname, metric)
                links.delete_route(dst, ifname, metric)

    def _sync_mss(self, rules: dict[str, int]) -> None:
        if self._mss is None:
            return
        try:
            if self._mss.sync(rules):
                log.info("TCP MSS clamping on %s", ", ".join(f"{i}={m}" for i, m in sorted(rules.items())) or "nothing")
        except MssClampError as e:
            log.warning("%s", e)

    def _record_attempt(self, runtime: ConnectionRuntime, conn_name: str, now: float) -> None:
        timing = runtime.timing.get(conn_name, planner.TunnelTiming())
        attempts = timing.attempts + 1
        delay = planner.backoff_delay(attempts, self._rand())
        runtime.timing[conn_name] = replace(timing, attempts=attempts, next_attempt_at=now + delay)
