"""The I/O of one pass, at the edges: observe charon and the kernel, then carry out a
plan's actions through the adapters and report what each came to. Holds adapters and
nothing else: every fact it learns goes back to the loop, which owns all state.

Each action is applied contained: an adapter's own error is a refusal, anything else
(an encoder's struct.error on a huge value, a bug) a fault of the connection it works
for (core/faults), and the next action goes ahead either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from agent.adapters.charon import CharonError
from agent.adapters.links import LinkError
from agent.adapters.mss_clamp import MssClampError
from agent.core.charon_objects import (
    INITIATES,
    CharonAction,
    InitiateChild,
    InitiateIke,
    LoadTunnel,
    TerminateChild,
    TerminateIke,
    UnloadConn,
    UnloadShared,
)
from agent.core.decide import ConnectionStep
from agent.core.faults import ConnectionFault, FaultStage
from agent.core.netstate import NetState
from agent.core.observation import CharonState
from agent.core.route_mode import DeleteRoute, EnsureInterface, RemoveInterface, Reroute, RouteAction, SetRoute
from agent.daemon.fast_reroute import FastReroute
from agent.daemon.ports import CharonPort, LinksPort, MssPort, YieldPort

log = logging.getLogger(__name__)

INITIATE_TIMEOUT_MS = -1  # return at once: charon negotiates on, events tell us the outcome
# Return at once too: a terminate that waited for a dead peer's answer (IKEv2 retransmits
# its DELETE) held the loop, and with it the route move of a failover, for seconds. IKE
# SAs go with force: one DELETE sent, the SA destroyed without waiting for the answer.
TERMINATE_TIMEOUT_MS = -1
ROUTE_ACTIONS = (EnsureInterface, RemoveInterface, SetRoute, DeleteRoute)


@dataclass
class Outcomes:
    """What the applied actions came to, for the loop to record."""

    loaded: dict[str, str] = field(default_factory=dict)  # conn name -> fingerprint, loads that succeeded
    unloaded: set[str] = field(default_factory=set)
    initiates: list[tuple[str, str, str]] = field(default_factory=list)  # (key, conn name, accepted|refused)
    faults: list[ConnectionFault] = field(default_factory=list)  # key "" in setup: the loop finds the owner


class Edges:
    def __init__(self, charon: CharonPort, links: LinksPort | None, mss: MssPort | None, *,
                 detect_local_address: Callable[[str], str | None], reroute: FastReroute | None = None,
                 ha_yield: YieldPort | None = None) -> None:
        self._charon = charon
        self._links = links
        self._mss = mss
        self._reroute = reroute
        self._ha_yield = ha_yield
        self.detect_local_address = detect_local_address

    # -- observing -------------------------------------------------------------------
    def reroutes_fired(self) -> int:
        """Noted before a pass looks at anything: route writes of a pass that a fast
        reroute overtook are held back."""
        return self._reroute.fired if self._reroute is not None else 0

    def observe_charon(self) -> tuple[CharonState, str | None]:
        """charon's state, or (unreachable, why)."""
        try:
            return self._charon.observe(), None
        except CharonError as e:
            return CharonState(reachable=False, error=str(e)), str(e)

    def observe_net(self, previous: NetState) -> NetState:
        """Interfaces, routes and our addresses; the previous observation if they cannot be read."""
        if self._links is None:
            return previous
        try:
            return self._links.observe()
        except LinkError as e:
            log.warning("cannot read interfaces and routes: %s", e)
            return previous

    # -- applying --------------------------------------------------------------------
    def sync_yield(self, yielding: bool) -> None:
        """Tell keepalived (its track file) whether this node yields its address."""
        if self._ha_yield is not None:
            self._ha_yield.sync(yielding)

    def apply_setup(self, actions: tuple[RouteAction | CharonAction, ...]) -> Outcomes:
        """Interfaces first (children bind to their if_ids), then charon's objects."""
        outcomes = Outcomes()
        self._apply_net([a for a in actions if isinstance(a, ROUTE_ACTIONS)], None, "", outcomes)
        for action in actions:
            if not isinstance(action, ROUTE_ACTIONS):
                self._apply_charon(action, "", outcomes)
        return outcomes

    def apply_step(self, step: ConnectionStep, since: int, outcomes: Outcomes) -> None:
        if step.failover is not None:
            log.warning("%s: failover from tunnel %d to tunnel %d: %s", step.label, step.failover.from_tunnel,
                        step.failover.to_tunnel, step.failover.reason.detail)
        # Traffic first: the routes move before charon tears anything down.
        self._apply_net(list(step.net_actions), since, step.key, outcomes)
        for action in step.charon_actions:
            self._apply_charon(action, step.key, outcomes)

    def sync_mss(self, rules: dict[str, int] | None) -> None:
        if self._mss is None or rules is None:
            return
        try:
            if self._mss.sync(rules):
                log.info("TCP MSS clamping on %s", ", ".join(f"{i}={m}" for i, m in sorted(rules.items())) or "nothing")
        except MssClampError as e:
            log.warning("%s", e)

    def arm_reroutes(self, plans: tuple[Reroute, ...], net: NetState, since: int) -> list[ConnectionFault]:
        """Arms what it can; a plan whose routes cannot be encoded is a fault (key "")."""
        if self._reroute is None:
            return []
        ifindex = {link.name: link.index for link in net.links.values()}
        failed = self._reroute.arm(list(plans), ifindex, since)
        return [ConnectionFault("", FaultStage.APPLY, error, plan.routes[0] if plan.routes else None)
                for plan, error in failed]

    def _apply_charon(self, action: CharonAction, key: str, outcomes: Outcomes) -> None:
        result = "accepted"
        try:
            self._charon_call(action, outcomes)
        except CharonError as e:
            log.warning("%s failed: %s", type(action).__name__, e)
            result = "refused"
        except Exception as e:  # the loop logs it with the connection's name and counts it
            outcomes.faults.append(ConnectionFault(key, FaultStage.APPLY, e, action))
            result = "refused"
        if isinstance(action, INITIATES):
            outcomes.initiates.append((key, action.conn_name, result))

    def _charon_call(self, action: CharonAction, outcomes: Outcomes) -> None:
        charon = self._charon
        match action:
            case LoadTunnel(connection=conn, number=number, fingerprint=fingerprint):
                log.info("%s: loading tunnel %d (%s)", conn.label, number, conn.tunnel(number).remote_ip)
                charon.load_tunnel(conn, number)
                outcomes.loaded[conn.tunnel(number).conn_name] = fingerprint
            case UnloadConn(conn_name=name):
                log.info("unloading %s: no longer configured", name)
                charon.unload_conn(name)
                outcomes.unloaded.add(name)
            case UnloadShared(shared_id=shared_id):
                charon.unload_shared(shared_id)
            case InitiateChild(conn_name=name):
                log.info("initiating %s (IKE and CHILD_SA)", name)
                charon.initiate(name, child=True, timeout_ms=INITIATE_TIMEOUT_MS)
            case InitiateIke(conn_name=name):
                log.info("initiating %s (IKE SA only: standby)", name)
                charon.initiate(name, child=False, timeout_ms=INITIATE_TIMEOUT_MS)
            case TerminateChild(conn_name=name, child_uniqueid=child_id):
                log.info("%s: closing CHILD_SA #%s (its IKE SA stays)", name, child_id)
                charon.terminate_child(child_id, timeout_ms=TERMINATE_TIMEOUT_MS)
            case TerminateIke(conn_name=name, ike_uniqueid=ike_id):
                log.info("%s: terminating IKE SA #%s", name, ike_id)
                charon.terminate_ike(ike_id, timeout_ms=TERMINATE_TIMEOUT_MS)

    def _apply_net(self, actions: list[RouteAction], since: int | None, key: str, outcomes: Outcomes) -> None:
        """`since`: route writes of a pass a fast reroute overtook wait for the next pass
        (None: setup, which never touches the routes a reroute moves)."""
        if not actions or self._links is None:
            return
        with self._net_guard(since) as current:
            if not current:
                log.debug("a fast reroute fired during this pass: its route changes wait for the next pass")
                return
            for action in actions:
                try:
                    self._link_call(action)
                except LinkError as e:
                    log.warning("%s failed: %s", type(action).__name__, e)
                except Exception as e:  # e.g. pyroute2 cannot encode the route: contained
                    outcomes.faults.append(ConnectionFault(key, FaultStage.APPLY, e, action))

    def _net_guard(self, since: int | None) -> AbstractContextManager[bool]:
        if self._reroute is None or since is None:
            return nullcontext(True)
        return self._reroute.guard(since)

    def _link_call(self, action: RouteAction) -> None:
        links = self._links
        assert links is not None
        match action:
            case EnsureInterface(name=name, if_id=if_id, mtu=mtu):
                log.info("interface %s: if_id %d, mtu %d, up", name, if_id, mtu)
                links.ensure_interface(name, if_id, mtu)
            case RemoveInterface(name=name):
                log.info("removing interface %s: its connection is no longer configured", name)
                links.remove_interface(name)
            case SetRoute(dst=dst, ifname=ifname, metric=metric, src=src):
                log.info("route %s dev %s metric %d%s", dst, ifname, metric, f" src {src}" if src else "")
                links.set_route(dst, ifname, metric, src)
            case DeleteRoute(dst=dst, ifname=ifname, metric=metric):
                log.info("deleting route %s dev %s metric %d", dst, ifname, metric)
                links.delete_route(dst, ifname, metric)
