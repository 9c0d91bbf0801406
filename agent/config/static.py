"""Validation of a static (plain AWS-style) connection: its CIDR blocks, its two tunnels
and their PSK files, which must be private to the owner and are never echoed in messages.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from agent.adapters.secret_files import SecretFileError, read_secret_file
from agent.config.fields import _describe, _ip, _mapping, _resolve
from agent.config.schema import StaticConfig, StaticTunnelConfig
from agent.core.bounds import overlap_problems, psk_problem, tunnel_ip_problem, tunnelled_cidr_problem
from agent.core.model import Secret

_STATIC_KEYS = ("ike_version", "routable_cidrs", "space_cidr_block", "tunnels")
_TUNNEL_KEYS = ("ip", "psk_file")
MAX_ROUTABLE_CIDRS = 32  # as for an API answer


def _static(raw: object, path: str, problems: list[str], base_dir: Path) -> StaticConfig | None:
    before = len(problems)
    section = _mapping(raw, path, _STATIC_KEYS, problems)
    if not isinstance(raw, dict):
        return None
    ike_version = section.get("ike_version")
    if ike_version is None:
        problems.append(f"{path}.ike_version: required: 1 or 2, as the VPN's configuration says")
    elif type(ike_version) is not int or ike_version not in (1, 2):
        problems.append(f"{path}.ike_version: must be 1 or 2, got '{ike_version}'")
    space_block = _cidr(section.get("space_cidr_block"), f"{path}.space_cidr_block", problems)
    routable = _routable_cidrs(section.get("routable_cidrs"), f"{path}.routable_cidrs",
                               space_block, problems)
    tunnels = _static_tunnels(section.get("tunnels"), f"{path}.tunnels", problems, base_dir)
    if len(problems) > before:
        return None
    return StaticConfig(ike_version=ike_version, routable_cidrs=routable,
                        space_cidr_block=str(space_block), tunnels=tunnels)


def _cidr(raw: object, path: str, problems: list[str]):
    """A tunnelled CIDR block (IPv4 inside RFC 1918), or None with the problem noted."""
    network = _any_cidr(raw, path, problems)
    if network is None:
        return None
    problem = tunnelled_cidr_problem(network)
    if problem is not None:
        problems.append(f"{path}: {problem}")
        return None
    return network


def _any_cidr(raw: object, path: str, problems: list[str]):
    if raw is None:
        problems.append(f"{path}: required: a CIDR block such as 10.0.0.0/16")
        return None
    try:
        return ipaddress.ip_network(raw.strip() if isinstance(raw, str) else "", strict=True)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(raw.strip(), strict=False)
        problems.append(f"{path}: '{raw}' has host bits set; did you mean {loose}?")
    except (ValueError, AttributeError):
        problems.append(f"{path}: '{raw}' is not a CIDR block (e.g. 172.16.0.0/16)")
    return None


def _routable_cidrs(raw: object, path: str, space_block, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{path}: expected a list of your side's RFC 1918 CIDR blocks, "
                        f"got {_describe(raw)}")
        return ()
    if len(raw) > MAX_ROUTABLE_CIDRS:
        problems.append(f"{path}: {len(raw)} entries, more than the {MAX_ROUTABLE_CIDRS} allowed")
        return ()
    networks = []
    for index, item in enumerate(raw):
        network = _cidr(item, f"{path}[{index}]", problems)
        if network is not None:
            networks.append((f"{path}[{index}]", network))
    for item_path, problem in overlap_problems(space_block, networks):
        problems.append(f"{item_path}: {problem}")
    return tuple(str(network) for _, network in networks)


def _static_tunnels(raw: object, path: str, problems: list[str], base_dir: Path):
    if not isinstance(raw, list) or len(raw) != 2:
        count = len(raw) if isinstance(raw, list) else _describe(raw)
        problems.append(f"{path}: expected exactly two tunnels (tunnel 1 and tunnel 2), "
                        f"got {count}")
        return ()
    tunnels = tuple(_static_tunnel(item, f"{path}[{index}]", problems, base_dir)
                    for index, item in enumerate(raw))
    if all(tunnels) and tunnels[0].ip == tunnels[1].ip:
        problems.append(f"{path}[1].ip: same as tunnels[0] ({tunnels[0].ip}); "
                        "the two tunnels need distinct IPs")
    return tunnels


def _static_tunnel(raw: object, path: str, problems: list[str],
                   base_dir: Path) -> StaticTunnelConfig | None:
    section = _mapping(raw, path, _TUNNEL_KEYS, problems)
    if not isinstance(raw, dict):
        return None
    ip = _ip(section, "ip", path, problems)
    if ip is None and section.get("ip") is None:
        problems.append(f"{path}.ip: required: the public IP of this tunnel's far end")
    elif ip is not None and (problem := tunnel_ip_problem(ipaddress.ip_address(ip))) is not None:
        problems.append(f"{path}.ip: {problem}")
        ip = None
    psk = _read_psk(section.get("psk_file"), f"{path}.psk_file", problems, base_dir)
    if ip is None or psk is None:
        return None
    return StaticTunnelConfig(ip=ip, psk=psk[0], psk_file=psk[1])


def _read_psk(raw: object, path: str, problems: list[str],
              base_dir: Path) -> tuple[Secret, str] | None:
    """(key, absolute path) from a regular file of root's (or the agent's user's) that
    group and others can neither read nor write.

    Messages name the file, never its content."""
    if raw is None:
        problems.append(f"{path}: required: a file holding the tunnel's pre-shared key "
                        "(chmod 600)")
        return None
    if not isinstance(raw, str) or not raw.strip():
        problems.append(f"{path}: expected a file path, got {_describe(raw)}")
        return None
    file = _resolve(raw, base_dir)
    try:
        # One open, every check on that descriptor: nothing can be swapped in between.
        key = read_secret_file(str(file), "")
    except SecretFileError as e:
        problems.append(f"{path}: {e}")
        return None
    if "\n" in key:
        problems.append(f"{path}: {file} holds more than one line; it must hold only the key")
        return None
    problem = psk_problem(key)
    if problem is not None:
        problems.append(f"{path}: the key in {file} {problem}")
        return None
    return Secret(key), str(file)
