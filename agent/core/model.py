"""Plain data shared by every layer: secrets, the VPN connection as the API (or a
static config) describes it, and the enums that name tunnel and connection states (the data-plane Mode lives in
modes.py, with the rule that resolves it).

Everything here is frozen and free of I/O so decisions over it stay pure.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field


class Secret:
    """A PSK or API token. Never rendered: repr/str show a placeholder, so a secret
    that slips into a log line, an exception or a status document stays hidden."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The clear text, for the one place that must hand it on (VICI, HTTP header)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # no pickling of clear text by accident
        raise TypeError("Secret cannot be pickled")


class Lenient:
    """Mixed into enums read from outside (the API, charon): a value this agent does not
    know yet (a newer peer sends more) parses as the enum's UNKNOWN member."""

    @classmethod
    def parse(cls, raw: object):
        try:
            return cls(raw)  # type: ignore[call-arg]
        except ValueError:
            return cls.UNKNOWN  # type: ignore[attr-defined]


class ConnectionStatus(Lenient, enum.Enum):
    """Connection `status` of the Platform API. Unknown values map to UNKNOWN (the CLI
    already knows more values than the schema documents)."""

    PENDING = "pending"
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    DEPROVISIONING = "deprovisioning"
    DELETING = "deleting"  # the CLI knows these two, the schema does not
    DELETED = "deleted"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def is_waiting(self) -> bool:
        """Still being built: poll like `heroku spaces:vpn:wait`."""
        return self in (ConnectionStatus.PENDING, ConnectionStatus.PROVISIONING)

    @property
    def is_gone(self) -> bool:
        """Being destroyed, or destroyed: what runs is unloaded after a grace."""
        return self in (ConnectionStatus.DEPROVISIONING, ConnectionStatus.DELETING, ConnectionStatus.DELETED)


class TunnelApiStatus(enum.Enum):
    """Tunnel `status` of the Platform API (AWS telemetry). DOWN = maintenance or dead."""

    UP = "UP"
    DOWN = "DOWN"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, raw: str) -> "TunnelApiStatus":
        try:
            return cls(raw.upper())
        except (ValueError, AttributeError):
            return cls.UNKNOWN


@dataclass(frozen=True)
class Tunnel:
    """One of the two redundant tunnels. `number` is 1 or 2 (array order, as the CLI
    names them)."""

    number: int
    ip: str
    psk: Secret = field(repr=False)
    status: TunnelApiStatus = TunnelApiStatus.UNKNOWN
    status_message: str = ""
    last_status_change: str = ""


@dataclass(frozen=True)
class VpnConnection:
    """What the far end is: the Platform API's vpn-connection, validated.

    `routable_cidrs` are the customer side (our local traffic selectors);
    `space_cidr_block` is the space side (remote traffic selector)."""

    id: str
    name: str
    public_ip: str
    routable_cidrs: tuple[str, ...]
    space_cidr_block: str
    ike_version: int
    status: ConnectionStatus
    tunnels: tuple[Tunnel, ...]
    status_message: str = ""

    def tunnel(self, number: int) -> Tunnel:
        return self.tunnels[number - 1]


@dataclass(frozen=True)
class VpnAnswer:
    """One answer of the Platform API: the connection's life-cycle status first, and the
    connection itself only once it is usable (active, every field valid). A pending or
    failed connection has no tunnels yet: that is a state, not an invalid answer."""

    status: ConnectionStatus
    status_message: str = ""
    connection: VpnConnection | None = None
    status_name: str = ""  # the value as sent (an UNKNOWN status keeps its name for people)

    @property
    def status_text(self) -> str:
        return self.status_name or self.status.value


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

#: Every charon object the agent creates starts with this; anything else is not ours.
OBJECT_PREFIX = "svpn"


def object_name(connection_key: str, tunnel_number: int) -> str:
    """Name of the charon connection (and its child, and the shared key) for one tunnel.

    Deterministic, so an agent restarted later finds and adopts what it made."""
    safe = _UNSAFE_NAME_CHARS.sub("_", connection_key).strip("_") or "conn"
    return f"{OBJECT_PREFIX}-{safe}-t{tunnel_number}"
