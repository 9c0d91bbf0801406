"""Validation of the Platform API's vpn-connection body into a VpnConnection.

Pure: no I/O. Every problem is collected and reported as "<key path>: <problem>" so an
operator sees the whole picture at once. Pre-shared keys never appear in a message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from agent.core.bounds import (
    MAX_NAME,
    MAX_TOKEN,
    networks_holding,
    overlap_problems,
    psk_problem,
    text_problem,
    tunnel_ip_problem,
    tunnelled_cidr_problem,
)
from agent.core.model import ConnectionStatus, Secret, Tunnel, TunnelApiStatus, VpnAnswer, VpnConnection
from agent.core.text import one_line

_TUNNEL_COUNT = 2
# Long junk values would make one bad field drown the rest of the report.
_MAX_SHOWN = 60
# Heroku's messages are a sentence ("supplied CIDR block already in use"); more is junk.
MAX_STATUS_MESSAGE = 500
_MAX_STATUS_NAME = 40
# Heroku allows a handful of routable CIDRs; far more is junk, and each costs selectors.
MAX_ROUTABLE_CIDRS = 32


class PayloadError(ValueError):
    """The body is not a usable vpn-connection; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid vpn-connection: " + "; ".join(self.problems))


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _Reader:
    """Collects problems while reading fields of one JSON object."""

    def __init__(self, problems: list[str], obj: dict, prefix: str = "") -> None:
        self.problems = problems
        self.obj = obj
        self.prefix = prefix

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def problem(self, key: str, text: str) -> None:
        self.problems.append(f"{self.path(key)}: {text}")

    def string(self, key: str, *, optional: bool = False, non_empty: bool = False) -> str:
        if key not in self.obj or self.obj[key] is None:
            if not optional:
                self.problem(key, "missing")
            return ""
        value = self.obj[key]
        if not isinstance(value, str):
            # No value in the message: this may be the PSK field.
            self.problem(key, f"expected a string, got {_type_name(value)}")
            return ""
        if non_empty and not value.strip():
            self.problem(key, "must not be empty")
        return value

    def capped(self, key: str, limit: int, *, optional: bool = False, non_empty: bool = False) -> str:
        """A name or token: refused when too long or holding control characters (the
        message says which, never the value: it may be junk of any size)."""
        value = self.string(key, optional=optional, non_empty=non_empty)
        problem = text_problem(value, limit)
        if problem is not None:
            self.problem(key, problem)
            return ""
        return value

    def parsed(self, key: str, parse: Callable[[str], str], what: str, *, optional=False) -> str:
        raw = self.string(key, optional=optional, non_empty=not optional)
        if not raw.strip():
            return ""
        try:
            return parse(raw)
        except ValueError:
            self.problem(key, f"{_show(raw)} is not {what}")
            return ""


def _ip(raw: str) -> str:
    return str(ipaddress.ip_address(raw))


def _network(raw: str) -> str:
    return str(ipaddress.ip_network(raw, strict=False))


def _space_cidr(r: _Reader) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    text = r.parsed("space_cidr_block", _network, "a network")
    if not text:
        return None
    network = ipaddress.ip_network(text)
    problem = tunnelled_cidr_problem(network)
    if problem is not None:
        r.problem("space_cidr_block", problem)
        return None
    return network


def _routable_cidrs(problems: list[str], data: dict, space) -> list:
    value = data.get("routable_cidrs")
    if not isinstance(value, list):
        problems.append(f"routable_cidrs: expected a list, got {_type_name(value)}")
        return []
    if not value:
        problems.append("routable_cidrs: must not be empty")
    if len(value) > MAX_ROUTABLE_CIDRS:
        problems.append(f"routable_cidrs: {len(value)} entries, more than the {MAX_ROUTABLE_CIDRS} allowed")
        return []
    networks = []
    for i, raw in enumerate(value):
        where = f"routable_cidrs[{i}]"
        if not isinstance(raw, str):
            problems.append(f"{where}: expected a string, got {_type_name(raw)}")
            continue
        try:
            net = ipaddress.ip_network(raw, strict=False)
        except ValueError:
            problems.append(f"{where}: {_show(raw)} is not a network")
            continue
        problem = tunnelled_cidr_problem(net)
        if problem is not None:
            problems.append(f"{where}: {problem}")
        else:
            networks.append((where, net))
    for where, problem in overlap_problems(space, networks):
        problems.append(f"{where}: {problem}")
    return networks


def _ike_version(problems: list[str], data: dict) -> int:
    value = data.get("ike_version")
    # bool is an int subclass: True must not pass for IKEv1.
    if isinstance(value, bool) or value not in (1, 2) or not isinstance(value, int):
        problems.append(f"ike_version: must be 1 or 2, got {_show(value)}")
        return 0
    return value


def _tunnel(problems: list[str], raw: object, index: int) -> Tunnel | None:
    prefix = f"tunnels[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{prefix}: expected an object, got {_type_name(raw)}")
        return None
    r = _Reader(problems, raw, prefix)
    before = len(problems)
    ip = r.parsed("ip", _ip, "an IP address")
    if ip:
        problem = tunnel_ip_problem(ipaddress.ip_address(ip))
        if problem is not None:
            r.problem("ip", problem)
    r.parsed("customer_ip", _ip, "an IP address", optional=True)
    psk = r.string("pre_shared_key", non_empty=True)
    if psk:
        problem = psk_problem(psk)
        if problem is not None:
            r.problem("pre_shared_key", problem)
    status = r.capped("status", MAX_TOKEN)
    status_message = r.string("status_message", optional=True)
    last_change = r.capped("last_status_change", MAX_TOKEN, optional=True)
    if len(problems) > before:
        return None
    return Tunnel(
        number=index + 1,
        ip=ip,
        psk=Secret(psk),
        status=TunnelApiStatus.parse(status),
        status_message=one_line(status_message, MAX_STATUS_MESSAGE),
        last_status_change=last_change,
    )


def _tunnels(problems: list[str], data: dict) -> tuple[Tunnel, ...]:
    value = data.get("tunnels")
    if not isinstance(value, list):
        problems.append(f"tunnels: expected a list, got {_type_name(value)}")
        return ()
    if len(value) != _TUNNEL_COUNT:
        problems.append(f"tunnels: expected {_TUNNEL_COUNT} tunnels, got {len(value)}")
    # Only the two a connection has are read: a list of thousands must not drown the report.
    tunnels = tuple(t for t in (_tunnel(problems, raw, i) for i, raw in enumerate(value[:_TUNNEL_COUNT]))
                    if t is not None)
    # Tunnels are told apart by their IP (they carry no id): two with one IP are one.
    for later in tunnels[1:]:
        if any(t.ip == later.ip for t in tunnels[: later.number - 1]):
            problems.append(f"tunnels[{later.number - 1}].ip: {later.ip} is the IP of another tunnel")
    return tunnels


def parse_vpn_connection(data: object) -> VpnConnection:
    """Validate a decoded vpn-connection body; raise PayloadError listing every problem."""
    if not isinstance(data, dict):
        raise PayloadError([f"<root>: expected an object, got {_type_name(data)}"])
    problems: list[str] = []
    r = _Reader(problems, data)
    conn_id = r.capped("id", MAX_NAME, non_empty=True)
    name = r.capped("name", MAX_NAME, non_empty=True)
    public_ip = r.parsed("public_ip", _ip, "an IP address")
    space = _space_cidr(r)
    routable = _routable_cidrs(problems, data, space)
    ike_version = _ike_version(problems, data)
    status = r.string("status")
    status_message = r.string("status_message", optional=True)
    tunnels = _tunnels(problems, data)
    cidrs = ([("space_cidr_block", space)] if space is not None else []) + routable
    for tunnel in tunnels:
        # Tunnelling a tunnel's own endpoint would route its IKE and ESP into itself. The
        # rules above already keep them apart (public endpoints, private CIDRs); this stays
        # true should either rule ever be relaxed.
        for where in networks_holding(ipaddress.ip_address(tunnel.ip), cidrs):
            problems.append(f"{where}: holds tunnels[{tunnel.number - 1}].ip {tunnel.ip}")
    if problems:
        raise PayloadError(problems)
    return VpnConnection(
        id=conn_id,
        name=name,
        public_ip=public_ip,
        routable_cidrs=tuple(str(net) for _, net in routable),
        space_cidr_block=str(space),
        ike_version=ike_version,
        status=ConnectionStatus.parse(status),
        tunnels=tunnels,
        status_message=one_line(status_message, MAX_STATUS_MESSAGE),
    )


def parse_vpn_answer(data: object) -> VpnAnswer:
    """Read the life-cycle status first. An active connection is validated fully (raise
    PayloadError listing every problem); a pending, failed or deleted one needs no
    tunnels yet. A status this agent does not know is used when the body is a complete
    connection (Heroku may add names, like the CLI's `available`), else waited on."""
    if not isinstance(data, dict):
        raise PayloadError([f"<root>: expected an object, got {_type_name(data)}"])
    raw_status, raw_message = data.get("status"), data.get("status_message")
    if not isinstance(raw_status, str):
        raise PayloadError([f"status: expected a string, got {_type_name(raw_status)}"])
    status = ConnectionStatus.parse(raw_status.lower())
    message = one_line(raw_message if isinstance(raw_message, str) else "", MAX_STATUS_MESSAGE)
    name = one_line(raw_status, _MAX_STATUS_NAME) if status is ConnectionStatus.UNKNOWN else ""
    if status is ConnectionStatus.ACTIVE:
        return VpnAnswer(status, message, parse_vpn_connection(data))
    if status is ConnectionStatus.UNKNOWN:
        try:
            return VpnAnswer(status, message, parse_vpn_connection(data), status_name=name)
        except PayloadError:
            return VpnAnswer(status, message, status_name=name)
    return VpnAnswer(status, message)
