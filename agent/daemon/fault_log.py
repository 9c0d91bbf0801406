"""What the loop does with a pass's faults (core/faults): applying faults are given to
the connection they belong to (its verdict says what failed), and each fault is logged
with its traceback when it first shows or changes, then quietly while it lasts, and
once more when it is over. Used by the loop thread only."""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import replace

from agent.core.faults import ConnectionFault, FaultStage, action_owner
from agent.core.memory import ConnectionRecord

log = logging.getLogger("agent.daemon.controller")  # where these lines have always come from


class FaultLog:
    def __init__(self) -> None:
        self._logged: dict[tuple[str, FaultStage], str] = {}  # the fault last logged in full

    def note(self, records: MutableMapping[str, ConnectionRecord], planned: Iterable[ConnectionFault],
             applied: Iterable[ConnectionFault]) -> None:
        """Planning faults are counted in their steps already; applying faults are counted
        here, in `records`, once the steps are recorded."""
        connections = [(r.key, r.settings.vpn) for r in records.values()]
        owned: list[ConnectionFault] = []
        for fault in applied:
            key = fault.key or (action_owner(fault.action, connections) if fault.action is not None else None)
            if key not in records:
                log.error("%s failed for no configured connection: %s", type(fault.action).__name__,
                          fault.text, exc_info=fault.error)
                continue
            owned.append(replace(fault, key=key))
            record = records[key]
            records[key] = replace(record, memory=record.memory.with_fault(owned[-1]))
        seen = set()
        for fault in (*planned, *owned):
            if fault.key in records:
                seen.add((fault.key, fault.stage))
                self._log(records[fault.key].settings.label, fault)
        for key, stage in [k for k in self._logged if k not in seen]:
            del self._logged[(key, stage)]
            if key in records:
                log.info("%s: %s works again", records[key].settings.label,
                         "planning" if stage is FaultStage.PLAN else "applying")

    def _log(self, label: str, fault: ConnectionFault) -> None:
        doing = "planning" if fault.stage is FaultStage.PLAN else "applying"
        if self._logged.get((fault.key, fault.stage)) == fault.text:
            log.debug("%s: %s failed again: %s", label, doing, fault.text)
            return
        self._logged[(fault.key, fault.stage)] = fault.text
        log.error("%s: %s failed: %s; its tunnels are left as they are, the other connections go on",
                  label, doing, fault.text, exc_info=fault.error)
