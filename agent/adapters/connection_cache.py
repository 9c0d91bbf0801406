"""The last good Platform API answer per space/vpn, kept on disk so a restarted agent can
bring tunnels up while the API is unreachable.

The files hold pre-shared keys: created 0600 in a 0700 directory, replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from urllib.parse import quote

from agent.core.model import VpnConnection
from agent.core.payload import PayloadError, parse_vpn_connection

log = logging.getLogger(__name__)


def _encode(name: str) -> str:
    # Percent-encoding leaves only [A-Za-z0-9_.~-]: no "/" survives, and "@" below stays
    # an unambiguous separator.
    if not name:
        raise ValueError("space and vpn names must not be empty")
    return quote(name, safe="")


class ConnectionCache:
    """One JSON file per space/vpn under `state_dir`."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = Path(state_dir)

    def path(self, space: str, vpn: str) -> Path:
        # The fixed prefix keeps "." and ".." names from ever being a bare dot file name.
        return self._dir / f"vpn-{_encode(space)}@{_encode(vpn)}.json"

    def save(self, space: str, vpn: str, raw: dict) -> None:
        """Write `raw` (the API body as received) so a crash leaves old or new, never half."""
        target = self.path(space, vpn)
        data = json.dumps(raw, sort_keys=True).encode("utf-8")
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._dir / f".{target.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir()
        log.debug("cached vpn-connection %s/%s in %s", space, vpn, target)

    def discard(self, space: str, vpn: str) -> None:
        """Forget the answer of a connection Heroku deleted: a restart must not bring
        its tunnels back from the cache."""
        try:
            self.path(space, vpn).unlink(missing_ok=True)
        except OSError as e:
            log.warning("could not remove the cache of %s/%s: %s", space, vpn, e)

    def _fsync_dir(self) -> None:
        # The rename is only durable once the directory entry is on disk.
        fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, space: str, vpn: str) -> VpnConnection | None:
        """The cached connection, or None when there is none or it cannot be used."""
        path = self.path(space, vpn)
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache %s for %s/%s: %s", path, space, vpn, e)
            return None
        try:
            return parse_vpn_connection(raw)
        except PayloadError as e:
            log.warning("ignoring invalid cache %s for %s/%s: %s", path, space, vpn, e)
            return None
