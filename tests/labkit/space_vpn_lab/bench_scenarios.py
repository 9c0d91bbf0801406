"""Maintenance scenarios of the failover benchmark: a Timeline clocks one run from its first
ping, and each driver (silent, graceful, telemetry, drain; and Heroku's changes from the
Platform API: cidr update, reordered, re-creation) acts on the space side or the system
under test at fixed offsets, marking when the maintenance ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from space_vpn_lab.lab import Lab, generate_psk
from space_vpn_lab.space_side import SpaceSideError

log = logging.getLogger(__name__)

LEAD_S = 2.0  # traffic before the first action, so the loss is never a start-up artefact


class Timeline:
    """Clock of one run: actions at fixed offsets from the first ping, logged as events."""

    def __init__(self, lab: Lab, system: Any, active: int) -> None:
        self.lab, self.system, self.active = lab, system, active
        self.t0 = time.monotonic()
        self.t0_unix = time.time()  # to find the run's lines in the logs
        self.events: list[dict[str, Any]] = []
        self.restore_at: float | None = None
        self.answer_unix: float | None = None  # when the API's new answer was served (g)

    def at(self, offset_s: float) -> None:
        time.sleep(max(0.0, self.t0 + offset_s - time.monotonic()))

    def mark(self, event: str) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.t0, 3), "event": event})
        log.info("bench: %s", event)

    def restored(self, event: str) -> None:
        self.mark(event)
        self.restore_at = time.monotonic()

    def block(self, number: int) -> None:
        """Blackhole the endpoint and forget its SA; after a graceful DELETE there may be
        no SA left to forget, and the blackhole (added first) is what matters then."""
        try:
            self.lab.space.silent_down(number)
        except SpaceSideError as e:
            log.info("bench: tunnel %s blocked, nothing left to forget (%s)", number, e)


def silent(run: Timeline) -> None:
    run.at(LEAD_S)
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} silently dropped (blackhole, SA forgotten)")
    run.at(LEAD_S + 10)
    run.lab.space.restore(run.active)
    run.restored(f"space: tunnel {run.active} blackhole lifted")


def graceful(run: Timeline) -> None:
    run.at(LEAD_S)
    run.lab.space.graceful_down(run.active)
    run.mark(f"space: tunnel {run.active} DELETE sent")
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} endpoint blocked")
    run.at(LEAD_S + 5)
    run.lab.space.restore(run.active)
    run.restored(f"space: tunnel {run.active} endpoint back")


TELEMETRY_DELAY_S = 10.0  # AWS telemetry turns a replaced tunnel DOWN after it dropped


def telemetry(run: Timeline) -> None:
    """As AWS does it: the tunnel drops silently, its status in the Platform API turns
    DOWN seconds later, and the agent polls the API at its default 30 s."""
    run.at(LEAD_S)
    run.block(run.active)
    run.mark(f"space: tunnel {run.active} silently dropped")
    run.at(LEAD_S + TELEMETRY_DELAY_S)
    run.mark(run.system.announce(run.active, down=True))
    run.at(LEAD_S + 20)
    run.lab.space.restore(run.active)
    run.mark(run.system.announce(run.active, down=False))
    run.restored(f"space: tunnel {run.active} blackhole lifted")


def drain(run: Timeline) -> None:
    run.at(LEAD_S)
    run.mark(run.system.drain(run.active))
    run.at(LEAD_S + 5)
    run.restored(run.system.drain(run.active, undo=True))


# --- changes Heroku makes, as the Platform API shows them (issue 12) ------------------------

NEW_CIDRS = ["172.16.0.0/12"]  # IKEv1-safe: one selector pair, a superset of the old /16
NEW_TUNNEL_IPS = ["198.51.100.3", "198.51.100.4"]  # documentation range, routed to the space


def cidr_update(run: Timeline) -> None:
    """`heroku spaces:vpn:update --cidrs`: AWS takes the new selectors first (the space
    side accepts them as a responder), the API's answer changes half a second later."""
    run.at(LEAD_S)
    run.lab.space.reconfigure(remote_ts=NEW_CIDRS[0])
    run.mark(f"space: accepts {NEW_CIDRS[0]} (existing SAs kept)")
    run.at(LEAD_S + 0.5)
    run.restored(run.system.update_cidrs(NEW_CIDRS))


def reordered(run: Timeline) -> None:
    """The API lists the same tunnels the other way round; nothing else changes."""
    run.at(LEAD_S)
    run.restored(run.system.reorder())


PENDING_AFTER_S = 2.0  # a 404, then `pending`, as right after `spaces:vpn:connect`
ACTIVE_AFTER_S = 5.0


def recreation(run: Timeline) -> None:
    """`spaces:vpn:destroy` + `spaces:vpn:connect`: both endpoints say DELETE and come
    back with new PSKs and new IPs; the API answers 404, then pending, then active."""
    psks = [generate_psk(), generate_psk()]  # never logged, never in the record
    run.at(LEAD_S)
    run.mark(run.system.recreate("gone"))
    run.lab.recreate_vpn(psks, NEW_TUNNEL_IPS)
    run.mark(f"space: VPN re-created with new PSKs on {', '.join(NEW_TUNNEL_IPS)} (DELETE sent on both tunnels)")
    run.at(LEAD_S + PENDING_AFTER_S)
    run.mark(run.system.recreate("pending", psks=psks, tunnel_ips=NEW_TUNNEL_IPS))
    run.at(LEAD_S + ACTIVE_AFTER_S)
    event = run.system.recreate("active")
    run.answer_unix = time.time()
    run.restored(event)


@dataclass(frozen=True)
class ScenarioSpec:
    key: str
    name: str
    driver: Callable[[Timeline], None]
    traffic_s: float  # long enough to see plain strongSwan's ~30 s DPD loss where it applies
    api_change: bool = False  # SA ids before/after and per-reply ping times go into the record


SCENARIOS = {s.key: s for s in (
    ScenarioSpec("a", "silent", silent, 45.0),
    ScenarioSpec("b", "graceful", graceful, 15.0),
    ScenarioSpec("c", "telemetry", telemetry, 50.0),
    ScenarioSpec("d", "drain", drain, 12.0),
    ScenarioSpec("e", "cidr update", cidr_update, 20.0, api_change=True),
    ScenarioSpec("f", "reordered", reordered, 12.0, api_change=True),
    ScenarioSpec("g", "re-creation", recreation, 25.0, api_change=True),
)}
