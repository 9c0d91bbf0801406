"""Readers for single config values (strings, paths, durations, IPs, sections).

Each appends "<key path>: <problem>" to the caller's `problems` list instead of raising,
so one pass reports every problem; messages describe a value's kind, never its content.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.core.durations import format_duration, parse_duration

# Keys people write when they mean to inline a secret: say where the secret belongs instead.
_INLINE_SECRET_KEYS = {"psk": "psk_file", "pre_shared_key": "psk_file", "token": "token_file",
                       "api_key": "token_file"}


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(raw: object, path: str, known: tuple[str, ...], problems: list[str]) -> dict:
    """The section as a dict ({} when absent or wrong); every unknown key is a problem."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{path or 'config'}: expected a mapping with keys "
                        f"{', '.join(known)}, got {_describe(raw)}")
        return {}
    for key in raw:
        if key in known:
            continue
        secret_home = _INLINE_SECRET_KEYS.get(key)
        if secret_home in known:
            problems.append(f"{_at(path, str(key))}: secrets are not allowed in the config; "
                            f"put it in a file (chmod 600) and name that file with {secret_home}")
        else:
            problems.append(f"{_at(path, str(key))}: unknown key (known: {', '.join(known)})")
    return raw


def _describe(value: object) -> str:
    """A value's kind, not its content (the content may be a misplaced secret)."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _string(section: dict, key: str, path: str, problems: list[str], default):
    raw = section.get(key)
    if raw is None:
        return default
    if not isinstance(raw, str) or not raw.strip():
        problems.append(f"{_at(path, key)}: expected a non-empty string, got {_describe(raw)}")
        return default
    return raw.strip()


def _file_path(section: dict, key: str, path: str, problems: list[str], base_dir: Path, default):
    value = _string(section, key, path, problems, None)
    return default if value is None else str(_resolve(value, base_dir))


def _resolve(value: str, base_dir: Path) -> Path:
    # Relative to the config file's folder, not to wherever the daemon was started.
    return Path(base_dir, value.strip())


def _shown(seconds: float) -> str:
    try:
        return format_duration(seconds)
    except ValueError:  # a number too large to be a duration: as it was written
        return f"{seconds:g}"


def _duration(section: dict, key: str, path: str, problems: list[str], default: float,
              bounds: tuple[float, float]) -> float:
    """Seconds, from `bounds` (minimum, maximum) inclusive; the default when absent or wrong."""
    raw = section.get(key)
    if raw is None:
        return default
    where = _at(path, key)
    try:
        seconds = parse_duration(raw, path=where)
    except ValueError as e:
        problems.append(str(e))
        return default
    low, high = bounds
    shown = raw.strip() if isinstance(raw, str) else _shown(seconds)
    if seconds < low:
        problems.append(f"{where}: {shown} is below the minimum {format_duration(low)}")
        return default
    if seconds > high:
        problems.append(f"{where}: {shown} is above the maximum {format_duration(high)}")
        return default
    return seconds


def _ip(section: dict, key: str, path: str, problems: list[str]) -> str | None:
    raw = section.get(key)
    if raw is None:
        return None
    try:
        return str(ipaddress.ip_address(raw.strip() if isinstance(raw, str) else ""))
    except ValueError:
        problems.append(f"{_at(path, key)}: '{raw}' is not an IP address")
        return None
