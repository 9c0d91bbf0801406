"""What the doctor reads from the host, each behind a plain callable the checks' caller
can swap (tests do): charon over VICI, commands such as `nft`, files under /proc, the
Platform API client. Every request is bounded by TIMEOUT: a doctor must not hang.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.adapters.charon import CharonClient, CharonError
from agent.adapters.charon_messages import decode_text
from agent.adapters.heroku import PlatformApi
from agent.adapters.mss_clamp import CHILD_ENV

TIMEOUT = 5.0  # seconds for each VICI, API and nft request


@dataclass(frozen=True)
class CharonFacts:
    version: str | None
    plugins: tuple[str, ...] | None
    error: str | None = None


class _CharonReader:
    """The two things the doctor asks charon: its version and the plugins it loaded."""

    def __init__(self, socket_path: str) -> None:
        self._client = CharonClient(socket_path, timeout=TIMEOUT)

    def version(self) -> str:
        return self._client.version()

    def plugins(self) -> tuple[str, ...]:
        stats = self._client.stats()
        return tuple(decode_text(p) for p in stats.get("plugins", []))

    def close(self) -> None:
        self._client.close()


def read_charon(socket_path: str, connect: Callable[[str], object] = _CharonReader) -> CharonFacts:
    client = connect(socket_path)
    try:
        version = client.version()
        try:
            return CharonFacts(version, client.plugins())
        except CharonError as e:
            return CharonFacts(version, None, f"stats failed: {e}")
    except CharonError as e:
        return CharonFacts(None, None, str(e))
    finally:
        client.close()


def run_command(argv: list[str]) -> tuple[int, str, str]:
    """(returncode, stdout, stderr); OSError when the program is missing."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=CHILD_ENV)
    except subprocess.TimeoutExpired as e:
        raise OSError(f"{argv[0]} timed out") from e
    return done.returncode, done.stdout, done.stderr


def read_text(path: str) -> str:
    return Path(path).read_text(encoding="ascii")


def api_client(url: str, token) -> PlatformApi:
    """One attempt per request: the doctor reports a failure, it does not wait it out."""
    return PlatformApi(url, token, timeout=TIMEOUT, attempts=1)
