"""`space-vpn-agent`: wires config, adapters, threads and the loop, then runs it.

    space-vpn-agent --config /etc/space-vpn-agent/agent.yaml    (foreground daemon)
    space-vpn-agent check-config --config PATH                  (validate and exit)
    space-vpn-agent doctor --config PATH [--json]               (check the host; exit 0/1/2)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from agent import __version__, doctor
from agent.adapters.charon import CharonClient, CharonEventListener
from agent.adapters.connection_cache import ConnectionCache
from agent.adapters.core_dumps import forbid_core_dumps
from agent.adapters.credentials import CredentialError, load_token
from agent.adapters.heroku import PlatformApi
from agent.adapters.address_watch import AddressWatch
from agent.adapters.vip_guard import VipGuard
from agent.adapters.yield_file import YieldFile
from agent.adapters.links import LinkManager, xfrm_interface_support
from agent.adapters.metrics import MetricsServer
from agent.adapters.mss_clamp import MssClamp
from agent.adapters.netinfo import source_address_towards
from agent.adapters.probe import Prober
from agent.adapters.route_socket import RouteSocket
from agent.adapters.sdnotify import SystemdNotifier
from agent.config import AgentConfig, ConfigError, load_config
from agent.control.server import ControlServer
from agent.core.modes import resolve_mode
from agent.core.selectors import selector_problem
from agent.core.snapshot import Snapshot
from agent.daemon.api_poller import ApiPoller, PollTarget
from agent.daemon.controller import Controller
from agent.daemon.edges import Edges
from agent.daemon.fast_reroute import FastReroute
from agent.daemon.messages import ControlRequest, Reload, Stop

log = logging.getLogger("agent")

DEFAULT_CONFIG = "/etc/space-vpn-agent/agent.yaml"
EXIT_CONFIG = 2  # bad config or credentials: systemd should not restart in a loop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="space-vpn-agent",
        description="Keeps a Heroku Private Space (or AWS-style) two-tunnel IPsec VPN up through strongSwan.",
    )
    parser.add_argument("--version", action="version", version=f"space-vpn-agent {__version__}")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config file (default {DEFAULT_CONFIG})")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check-config", help="validate the config file and exit (0 valid, 2 invalid)")
    check.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file")
    diagnose = sub.add_parser("doctor", help="check charon, kernel, firewall, sysctls, token and CIDRs "
                                             "(exit 0 OK, 1 WARN, 2 FAIL)")
    diagnose.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file")
    diagnose.add_argument("--json", action="store_true", help="print the checks as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "doctor":  # reports a bad config as one of its checks; forbids core dumps itself
        return doctor.run_doctor(args.config, as_json=args.json)
    forbid_core_dumps()  # before any secret is read (the config reads the PSK files)
    try:
        config = load_config(args.config)
    except (ConfigError, OSError, ValueError) as e:
        print(f"space-vpn-agent: {args.config}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        refused = _cached_selector_problems(config)
        for problem in refused:
            print(f"space-vpn-agent: {args.config}: {problem}", file=sys.stderr)
        if refused:
            return EXIT_CONFIG
        print(f"{args.config}: OK, {len(config.connections)} connection(s)")
        return 0
    _setup_logging(config.log_level)
    route_unsupported = xfrm_interface_support()
    try:
        for conn in config.connections:
            resolve_mode(conn.mode, route_unsupported)
    except ValueError as e:
        log.error("%s: %s", args.config, e)
        return EXIT_CONFIG
    try:
        return Daemon(config, args.config, route_unsupported).run()
    except CredentialError as e:
        log.error("%s", e)
        return EXIT_CONFIG
    except OSError as e:  # e.g. the control socket's folder cannot be created
        log.error("cannot start: %s", e)
        return 1


def _cached_selector_problems(config: AgentConfig) -> list[str]:
    """What the loop would refuse to load, for Heroku connections whose last API answer
    is cached (static ones are checked with the config itself). A cache this user cannot
    read (state_dir is root's) is skipped."""
    cache, found = ConnectionCache(Path(config.state_dir)), []
    for index, conn in enumerate(config.connections):
        if conn.static is not None:
            continue
        path = cache.path(conn.space, conn.vpn)
        if not os.access(path, os.R_OK):
            continue
        vpn = cache.load(conn.space, conn.vpn)
        if vpn is None:
            continue
        problem = selector_problem(vpn.ike_version, conn.mode, vpn.routable_cidrs, conn.traffic_selectors)
        if problem is not None:
            found.append(f"connections[{index}] ({conn.label}), as the last Platform API answer (cached in "
                         f"{path}) says: {problem}")
    return found


def _setup_logging(level: str) -> None:
    # Under systemd the journal stamps time and unit; elsewhere we do.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines every poll are noise


def polling_key(targets: list[PollTarget], config: AgentConfig, token: str | None) -> tuple:
    """Everything an API poller is built from: equal keys, the same poller."""
    api = config.api
    return tuple(targets), api.url, api.timeout, api.poll_interval, token


class Daemon:
    """Owns the threads around the loop; the loop owns the state."""

    def __init__(self, config: AgentConfig, config_path: str, route_unsupported: str | None) -> None:
        self._config_path = config_path
        self._route_unsupported = route_unsupported
        self._notifier = SystemdNotifier()
        self._poller: ApiPoller | None = None
        self._poll_key: tuple | None = None  # what the running poller was started with
        self._charon = CharonClient(config.strongswan.vici_socket)
        self._links = LinkManager()  # also finds our address inside the routable CIDRs
        # Its own netlink socket: it writes from the VICI event thread.
        self._route_socket = RouteSocket() if route_unsupported is None else None
        self._reroute = FastReroute(self._route_socket) if self._route_socket is not None else None
        # The split-brain guard's track file: set at start (ha.yield_file is not reloaded).
        ha_yield = YieldFile(config.ha.yield_file) if config.ha.enabled and config.ha.yield_file else None
        edges = Edges(self._charon, self._links, MssClamp() if route_unsupported is None else None,
                      detect_local_address=source_address_towards, reroute=self._reroute, ha_yield=ha_yield)
        self._controller = Controller(
            config,
            edges,
            ConnectionCache(Path(config.state_dir)),
            route_unsupported=route_unsupported,
            reload_config=lambda: load_config(self._config_path),
            on_config=self._on_config,
            on_pass=self._after_pass,
            on_probe_targets=self._set_probe_targets,
            on_alive=self._alive,
        )
        self._prober = Prober(self._controller.post)
        self._addresses = AddressWatch(self._controller.post)  # an HA pair's virtual address moved
        self._vip_guard = VipGuard(self._controller.post)  # who else answers for it (split brain)
        self._listener = CharonEventListener(config.strongswan.vici_socket, self._on_charon_message)
        self._metrics = None
        if config.metrics.enabled:
            self._metrics = MetricsServer(config.metrics.host, config.metrics.port, lambda: self._controller.snapshot)
        self._control = ControlServer(
            config.control_socket, lambda: self._controller.snapshot, self._controller.post, Reload, ControlRequest
        )

    def run(self) -> int:
        # A thread waiting for the GIL gets it after at most this long: the VICI event
        # thread (fast reroute) must not wait the default 5 ms after each system call
        # while the loop is busy with a pass.
        sys.setswitchinterval(0.001)
        config = self._controller.config
        log.info("space-vpn-agent %s starting: %d connection(s), charon at %s",
                 __version__, len(config.connections), config.strongswan.vici_socket)
        if self._route_unsupported:
            log.info("route mode unavailable: %s", self._route_unsupported)
        if self._metrics is not None:
            self._metrics.start()  # first: a taken port ends the start-up before anything else runs
            log.info("metrics on http://%s:%d/metrics", config.metrics.host, self._metrics.port)
        self._on_config(config)
        self._listener.start()
        self._control.start()
        self._prober.start()
        self._addresses.start()
        if config.ha.enabled:
            self._vip_guard.start()
        signal.signal(signal.SIGTERM, lambda *_: self._controller.post(Stop()))
        signal.signal(signal.SIGINT, lambda *_: self._controller.post(Stop()))
        signal.signal(signal.SIGHUP, lambda *_: self._controller.post(Reload()))
        try:
            return self._controller.run()
        finally:
            self._notifier.notify(STOPPING="1")
            if self._poller is not None:
                self._poller.stop()
            self._listener.stop()
            self._control.stop()
            self._prober.stop()
            self._addresses.stop()
            self._vip_guard.stop()
            if self._metrics is not None:
                self._metrics.stop()
            self._charon.close()
            self._links.close()
            if self._route_socket is not None:
                self._route_socket.close()

    def _on_charon_message(self, message: object) -> None:
        """VICI event thread: a fast reroute first (route mode), then the loop hears of it."""
        if self._reroute is not None:
            self._reroute.on_event(message)
        self._controller.post(message)

    def _on_config(self, config: AgentConfig) -> bool:
        """A (re)loaded config; True when API polling started over."""
        restarted = self._start_poller(config)
        if config.ha.enabled:
            self._vip_guard.watch(c.local_address for c in config.connections if c.local_address)
        return restarted

    def _start_poller(self, config: AgentConfig) -> bool:
        """(Re)start API polling for the Heroku connections of `config`; True when the
        polling starts over. At start a missing token is fatal; on reload the running
        poller is kept instead, and so it is when nothing it uses changed."""
        targets = [PollTarget(c.key, c.space, c.vpn) for c in config.connections if c.static is None]
        token = None
        if targets:
            try:
                token = load_token(config.api.token_file, os.environ, os.environ.get("CREDENTIALS_DIRECTORY"))
            except CredentialError as e:
                if self._poller is None:
                    raise
                log.error("%s; keeping the running Platform API poller", e)
                return False
        key = polling_key(targets, config, token)
        if self._poller is not None and key == self._poll_key:
            # Nothing the poller uses changed: a new one would poll at once, and a burst
            # of SIGHUPs would become a burst of API calls from the account's budget.
            return False
        if self._poller is not None:
            # Told to stop, not waited for: a request in flight (up to api.timeout and its
            # retries) must not hold the loop; what it still learns is never posted.
            self._poller.stop()
            self._poller = None
        self._poll_key = key
        if token is None:
            return True
        api = PlatformApi(config.api.url, token, timeout=config.api.timeout, user_agent=f"space-vpn-agent/{__version__}")
        self._poller = ApiPoller(api, targets, self._controller.post, interval=config.api.poll_interval)
        self._poller.start()
        return True

    def _set_probe_targets(self, targets) -> None:
        try:
            self._prober.set_targets(targets)
        except ValueError as e:  # config validation should have caught it; never stop the loop
            log.error("probes not started: %s", e)

    def _after_pass(self, snapshot: Snapshot) -> None:
        if not self._notifier.enabled:
            return
        status = "; ".join(f"{c.space}/{c.vpn}: {c.summary}" for c in snapshot.connections)
        self._notifier.notify(READY="1", STATUS=status)  # the notifier makes it one line

    def _alive(self) -> None:
        """The loop thread came round: the systemd watchdog hears it (WatchdogSec), and from
        nowhere else, so a hung loop is restarted whatever the other threads do."""
        self._notifier.notify(WATCHDOG="1")


if __name__ == "__main__":
    sys.exit(main())
