"""The doctor's report: `run_checks` gathers the facts (facts.py) and runs every check
(checks.py, firewall.py) in report order; `render` and `to_json` print them; `run_doctor`
is the command. Exit 0 all OK, 1 some WARN, 2 some FAIL. The API token is only handed to
the adapter: no check text ever holds it; like the daemon, the command makes itself
non-dumpable before it reads the token or a PSK.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.core_dumps import forbid_core_dumps
from agent.adapters.credentials import CredentialError, load_token
from agent.adapters.heroku import PlatformApiError
from agent.adapters.links import xfrm_interface_support
from agent.adapters.netinfo import source_address_towards
from agent.config import AgentConfig, ConfigError, load_config, static_vpn_connection
from agent.core.model import VpnConnection
from agent.core.modes import Mode, ModeUnavailable, resolve_mode
from agent.doctor import checks
from agent.doctor.checks import FAIL, NEW_TOKEN, OK, WARN, Check
from agent.doctor.facts import CharonFacts, api_client, read_charon, read_text, run_command
from agent.doctor.firewall import check_firewall, tunnel_ips

EXIT_CODES = {OK: 0, WARN: 1, FAIL: 2}


def run_checks(
    config: AgentConfig,
    *,
    charon: Callable[[str], CharonFacts] = read_charon,
    route_support: Callable[[], str | None] = xfrm_interface_support,
    run: Callable[[list[str]], tuple[int, str, str]] = run_command,
    read_file: Callable[[str], str] = read_text,
    environ: Mapping[str, str] = os.environ,
    token_loader=load_token,
    api_factory=api_client,
    cache: ConnectionCache | None = None,
    detect: Callable[[str], str | None] = source_address_towards,
) -> list[Check]:
    """Every check, in report order. The callables are the outside world (tests fake them)."""
    facts = charon(config.strongswan.vici_socket)
    route_unsupported = route_support()
    modes = {c.key: _mode_here(c.mode, route_unsupported) for c in config.connections}
    cache = cache or ConnectionCache(Path(config.state_dir))
    api_checks, vpns, sources = _check_api(config, environ, token_loader, api_factory, cache)
    try:
        nft, nft_error = run(["nft", "-j", "list", "ruleset"]), None
    except OSError as e:
        nft, nft_error = None, f"nft not usable ({e.strerror or e})"
    result = [
        checks.check_charon(config.strongswan.vici_socket, facts.version, facts.error),
        checks.check_plugins(facts.plugins, facts.error),
        checks.check_route_mode(config.connections, route_unsupported),
        check_firewall(nft, nft_error, tunnel_ips(vpns.values())),
        checks.check_rp_filter(read_file, any(m is Mode.ROUTE for m in modes.values())),
    ]
    for conn in config.connections:
        vpn = vpns.get(conn.key)
        result.append(checks.check_mss(conn, modes[conn.key], vpn.space_cidr_block if vpn else None))
    result += api_checks
    for conn in config.connections:
        result.append(checks.check_cidrs(conn, vpns.get(conn.key), sources.get(conn.key, ""), detect))
        if vpns.get(conn.key) is not None:  # else check_cidrs says it is not checked
            result.append(checks.check_selectors(conn, modes[conn.key], vpns[conn.key], sources[conn.key]))
    if config.ha.enabled:
        result += _check_ha(config, run, read_file)
    return result


def _check_ha(config: AgentConfig, run, read_file) -> list[Check]:
    result = [checks.check_keepalived(_try(run, ["pgrep", "-x", "keepalived"]))]
    held = _addresses(run)
    vips = [conn.local_address for conn in config.connections if conn.local_address]
    for conn in config.connections:
        vip = conn.local_address or ""
        interface = held.get(vip)
        arping = None
        if interface is not None:  # duplicate address detection: does another node answer for it?
            arping = _try(run, ["arping", "-D", "-c", "2", "-w", "3", "-I", interface, vip])
        result.append(checks.check_vip(conn.label, vip, interface, arping))
    try:
        value = read_file("/proc/sys/net/ipv4/ip_nonlocal_bind")
    except OSError:
        value = None
    result.append(checks.check_nonlocal_bind(config.metrics.host, vips, value))
    try:
        keepalived_conf = read_file(checks.KEEPALIVED_CONF)
    except OSError:
        keepalived_conf = None
    path = config.ha.yield_file
    result.append(checks.check_yield_file(path, bool(path) and os.path.isdir(os.path.dirname(path) or "."),
                                          keepalived_conf))
    return result


def _try(run, argv: list[str]) -> tuple[int, str, str] | None:
    try:
        return run(argv)
    except OSError:
        return None  # the program is not installed


def _addresses(run) -> dict[str, str]:
    """This host's IPv4 addresses and their interfaces (`ip -j -4 addr`)."""
    found = _try(run, ["ip", "-j", "-4", "addr", "show"])
    if found is None or found[0] != 0:
        return {}
    try:
        links = json.loads(found[1])
    except ValueError:
        return {}
    return {str(a.get("local")): str(link.get("ifname")) for link in links if isinstance(link, dict)
            for a in link.get("addr_info", []) if isinstance(a, dict)}


def _mode_here(wanted: Mode, route_unsupported: str | None) -> Mode | None:
    """The mode the daemon would run here; None where it would refuse to start (the
    route mode check reports that)."""
    try:
        return resolve_mode(wanted, route_unsupported)[0]
    except ModeUnavailable:
        return None


def _check_api(config: AgentConfig, environ: Mapping[str, str], token_loader, api_factory,
               cache: ConnectionCache) -> tuple[list[Check], dict[str, VpnConnection], dict[str, str]]:
    """Token and API checks, plus the VpnConnection of every connection known (API answer,
    else cache, else static config) and where each came from."""
    vpns, sources = {}, {}
    for conn in config.connections:
        if conn.static is not None:
            vpns[conn.key], sources[conn.key] = static_vpn_connection(conn), "static config"
    heroku = [c for c in config.connections if c.static is None]
    if not heroku:
        return [Check("token", OK, "no Heroku connections: no token needed")], vpns, sources
    try:
        token = token_loader(config.api.token_file, environ, environ.get("CREDENTIALS_DIRECTORY"))
    except CredentialError as e:
        result = [Check("token", FAIL, str(e), NEW_TOKEN + ", then set api.token_file or HEROKU_API_KEY")]
        _from_cache(heroku, cache, vpns, sources)
        return result, vpns, sources
    result = []
    api = api_factory(config.api.url, token)
    try:
        for conn in heroku:
            try:
                answer = api.get_vpn_connection(conn.space, conn.vpn)
            except PlatformApiError as e:
                exists = _cache_exists(cache, conn)
                state = checks.cache_state(str(cache.path(conn.space, conn.vpn)), exists)
                result.append(checks.check_api_error(conn.label, e.kind, str(e), state))
                _from_cache([conn], cache, vpns, sources)
                continue
            vpns[conn.key], sources[conn.key] = answer.answer.connection, "API"
            result.append(checks.check_api_answer(conn.label, conn.vpn, conn.space, answer.answer))
    finally:
        api.close()
    return result, vpns, sources


def _cache_exists(cache: ConnectionCache, conn) -> bool | None:
    try:
        return cache.path(conn.space, conn.vpn).exists()
    except OSError:
        return None  # the state directory is 0700 root: unknown to other users


def _from_cache(conns, cache: ConnectionCache, vpns: dict, sources: dict) -> None:
    for conn in conns:
        if _cache_exists(cache, conn):
            vpn = cache.load(conn.space, conn.vpn)
            if vpn is not None:
                vpns[conn.key], sources[conn.key] = vpn, "cache"


def render(checks_: list[Check]) -> str:
    """An aligned table: status, check, detail, with "fix:" lines under the detail."""
    name_width = max((len(c.name) for c in checks_), default=5)
    indent = " " * (6 + name_width + 2)
    lines = []
    for c in checks_:
        lines.append(f"{c.status:<6}{c.name:<{name_width}}  {c.detail}")
        if c.fix:
            lines.append(f"{indent}fix: {c.fix}")
    counts = ", ".join(f"{sum(c.status == s for c in checks_)} {s}" for s in (OK, WARN, FAIL))
    lines.append(f"doctor: {checks.worst(checks_)} ({counts})")
    return "\n".join(lines) + "\n"


def to_json(checks_: list[Check]) -> str:
    return json.dumps({"status": checks.worst(checks_), "checks": [asdict(c) for c in checks_]},
                      indent=2) + "\n"


def run_doctor(config_path: str, *, as_json: bool = False, print_=print, **probes) -> int:
    """Load the config, run every check, print the report; the exit code of the worst."""
    forbid_core_dumps()  # first: the config reads the PSK files, the checks the token
    try:
        config = load_config(config_path)
    except (ConfigError, OSError, ValueError) as e:
        text = str(e) if str(e).startswith(str(config_path)) else f"{config_path}: {e}"
        found = [Check("config", FAIL, text.replace("\n", "; "),
                       f"space-vpn-agent check-config --config {config_path}")]
    else:
        found = [Check("config", OK, f"{config_path}: {len(config.connections)} connection(s)")]
        found += run_checks(config, **probes)
    print_(to_json(found) if as_json else render(found), end="")
    return EXIT_CODES[checks.worst(found)]
