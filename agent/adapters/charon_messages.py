"""VICI messages for one tunnel, and list-sas answers parsed into observations.

Pure functions, kept apart from the socket code so they are unit-tested against
golden dicts (values as bytes, the way charon sends them). Every string charon sends is
read as one printable line of bounded length: it reaches logs, metrics and terminals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agent.core import desired as seed
from agent.core.desired import DesiredConnection, DesiredTunnel
from agent.core.observation import ChildSa, ChildState, IkeSa, IkeState, TunnelSas
from agent.core.text import one_line

MAX_TEXT = 256  # characters of one value: names, states, versions, ids are far shorter
MAX_SELECTORS = 64  # traffic selectors kept per side of a CHILD_SA (ours are a handful)


def load_conn_message(conn: DesiredConnection, number: int) -> dict[str, Any]:
    """The load-conn message for tunnel `number`, mapping the seed's ipsec.conf."""
    tunnel = conn.tunnel(number)
    ike: dict[str, Any] = {
        "version": str(tunnel.ike_version),
        "local_addrs": [conn.local_address],
        "remote_addrs": [tunnel.remote_ip],
        "proposals": [seed.IKE_PROPOSAL],
        "dpd_delay": f"{seed.DPD_DELAY}s",  # liveness from IKE itself (core/desired)
        "keyingtries": "0",  # keyingtries=%forever
        "unique": "no",
        "local": {"auth": "psk", "id": conn.local_id},
        "remote": {"auth": "psk", "id": tunnel.remote_ip},
        "children": {tunnel.conn_name: _child(tunnel)},
    }
    if tunnel.ike_version == 1:
        # IKEv1 has no real IKE rekeying: ikelifetime means reauthentication.
        ike["reauth_time"] = f"{seed.IKE_LIFETIME}s"
        ike["rekey_time"] = "0"
        ike["dpd_timeout"] = f"{seed.DPD_TIMEOUT}s"
    else:
        ike["rekey_time"] = f"{seed.IKE_LIFETIME}s"
        ike["mobike"] = "no"  # AWS endpoints do not speak MOBIKE
    return {tunnel.conn_name: ike}


def _child(tunnel: DesiredTunnel) -> dict[str, Any]:
    if_id = tunnel.if_id
    local_ts, remote_ts = tunnel.child_ts
    child = {
        "mode": "tunnel",
        "local_ts": list(local_ts),  # every routable CIDR: IKEv2 puts them all in one CHILD_SA
        "remote_ts": list(remote_ts),
        "esp_proposals": [seed.ESP_PROPOSAL],  # with PFS group modp2048
        "life_time": f"{seed.CHILD_LIFETIME}s",
        "rekey_time": f"{seed.CHILD_REKEY}s",
        "dpd_action": "restart",  # dpdaction=restart
        "start_action": "none",  # the agent initiates, not charon
        "close_action": "none",
    }
    if if_id is not None:
        # Route mode: own policies per tunnel, bound to its XFRM interface; charon
        # installs no routes for such children (the agent owns them).
        child["if_id_in"] = child["if_id_out"] = str(if_id)
    return child


def load_shared_message(conn: DesiredConnection, number: int) -> dict[str, Any]:
    """load-shared for the tunnel's PSK. Owners: our id and the tunnel IP (the seed's
    ipsec.secrets line). Callers must not log this message."""
    tunnel = conn.tunnel(number)
    return {
        "id": tunnel.conn_name,
        "type": "IKE",
        "data": tunnel.psk.reveal().encode(),
        "owners": [conn.local_id, tunnel.remote_ip],
    }


def initiate_message(conn_name: str, *, child: bool, timeout_ms: int) -> dict[str, Any]:
    """initiate, never without a timeout (-1 = return at once, charon works on)."""
    message: dict[str, Any] = {"ike": conn_name, "timeout": str(timeout_ms), "loglevel": "0"}
    if child:
        message["child"] = conn_name
    return message


def terminate_message(*, ike_id: str | None = None, child_id: str | None = None, timeout_ms: int) -> dict[str, Any]:
    message: dict[str, Any] = {"timeout": str(timeout_ms), "loglevel": "0"}
    if ike_id is not None:
        message["ike-id"] = ike_id
        message["force"] = "yes"  # do not wait for a dead peer's answer
    if child_id is not None:
        message["child-id"] = child_id
    return message


def decode_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return "" if value is None else one_line(str(value), MAX_TEXT)


def decode_int(value: Any) -> int | None:
    try:
        return int(decode_text(value))
    except ValueError:
        return None


def parse_child(section: Mapping[str, Any]) -> ChildSa:
    return ChildSa(
        name=decode_text(section.get("name")),
        uniqueid=decode_text(section.get("uniqueid")),
        state=ChildState.parse(decode_text(section.get("state"))),
        reqid=decode_text(section.get("reqid")),
        bytes_in=decode_int(section.get("bytes-in")) or 0,
        bytes_out=decode_int(section.get("bytes-out")) or 0,
        packets_in=decode_int(section.get("packets-in")) or 0,
        packets_out=decode_int(section.get("packets-out")) or 0,
        use_in=decode_int(section.get("use-in")),
        use_out=decode_int(section.get("use-out")),
        install_time=decode_int(section.get("install-time")) or 0,
        spi_in=decode_text(section.get("spi-in")),
        local_ts=decode_list(section.get("local-ts")),
        remote_ts=decode_list(section.get("remote-ts")),
    )


def decode_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        return ()
    return tuple(decode_text(item) for item in value[:MAX_SELECTORS])


def parse_ike(name: str, section: Mapping[str, Any]) -> IkeSa:
    children = section.get("child-sas") or {}
    return IkeSa(
        name=name,
        uniqueid=decode_text(section.get("uniqueid")),
        state=IkeState.parse(decode_text(section.get("state"))),
        version=decode_int(section.get("version")) or 0,
        local_host=decode_text(section.get("local-host")),
        remote_host=decode_text(section.get("remote-host")),
        established=decode_int(section.get("established")),
        children=tuple(parse_child(c) for c in children.values()),
        tasks_active=tuple(decode_text(t) for t in section.get("tasks-active") or ()),
    )


def parse_list_sas(events: Iterable[Mapping[str, Any]]) -> dict[str, TunnelSas]:
    """list-sas streams one event per IKE SA: {conn_name: {...}}. Group by name."""
    grouped: dict[str, list[IkeSa]] = {}
    for event in events:
        for name, section in event.items():
            grouped.setdefault(name, []).append(parse_ike(name, section))
    return {name: TunnelSas(tuple(sas)) for name, sas in grouped.items()}
