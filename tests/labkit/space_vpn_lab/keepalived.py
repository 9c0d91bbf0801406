"""Real keepalived (Debian's package) for one HA lab gateway: its config, notify and
track scripts, and the process in the gateway's namespace.

One sync group holds two VRRP instances (WAN VIP, LAN VIP) so the addresses always move
together, as on a firewall pair. Both nodes start as BACKUP with nopreempt: the
higher priority only decides the first election. Every state change is written with its
unix time to an events file by the notify script (keepalived's own log has whole seconds
only), which then tells the agent (`agentctl ha master|backup|fault`) when one runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BINARY = "keepalived"
START_TIMEOUT_S = 5.0
STOP_GRACE_S = 5.0
SYNC_GROUP = "HA"
WAN_INSTANCE, LAN_INSTANCE = "WAN", "LAN"
#: Seconds between a master's gratuitous ARPs (config/keepalived.example.conf: the same).
GARP_REFRESH_S = 2
#: keepalived's state words -> what `agentctl ha` takes. STOP (keepalived shutting down,
#: its VIPs removed) counts as backup: a node without the addresses must not be active.
AGENTCTL_STATES = {"MASTER": "master", "BACKUP": "backup", "FAULT": "fault", "STOP": "backup"}


@dataclass(frozen=True)
class VrrpSettings:
    """What both nodes share. Always VRRPv3: v2 rounds an advert_int below 1 s up to 1 s."""

    advert_int_s: float = 0.2
    #: nopreempt (False): a node that comes back stays BACKUP whatever its priority.
    preempt: bool = False
    #: True: adverts go to the peer's own address (unicast_peer), not to 224.0.0.18.
    unicast: bool = False
    wan_router_id: int = 10
    lan_router_id: int = 11
    #: Track script: seconds between runs, failures before FAULT, successes to recover.
    track_interval_s: int = 1
    track_fall: int = 2
    track_rise: int = 2

    def __post_init__(self) -> None:
        if not 0.01 <= self.advert_int_s <= 255:
            raise ValueError(f"advert_int must be 0.01-255 s, got {self.advert_int_s}")


@dataclass(frozen=True)
class VrrpNode:
    """One gateway as its keepalived sees it."""

    name: str
    priority: int
    wan_iface: str
    lan_iface: str
    wan_ip: str
    lan_ip: str
    peer_wan_ip: str
    peer_lan_ip: str
    wan_vip: str
    lan_vip: str
    wan_prefixlen: int
    lan_prefixlen: int

    def __post_init__(self) -> None:
        if not 1 <= self.priority <= 254:
            raise ValueError(f"VRRP priority must be 1-254 (255 is the address owner), got {self.priority}")


def render_config(node: VrrpNode, settings: VrrpSettings, notify_script: str,
                  track_script: str | None = None, track_file: str | None = None) -> str:
    """keepalived.conf text for `node`; `track_script` (an executable, exit 0 = healthy)
    puts the group in FAULT when it fails, and so does a non-zero `track_file` (the
    agent's split-brain yield, ha.yield_file). No side effects."""
    track_def, track_ref = "", ""
    if track_file:
        track_def += f"""
track_file agent_yield {{
  file {_quote(track_file)}
  weight 0
  init_file 0 overwrite
}}
"""
        track_ref += "  track_file {\n    agent_yield\n  }\n"
    if track_script:
        track_def += f"""
vrrp_script chk_vpn {{
  script {_quote(track_script)}
  interval {settings.track_interval_s}
  fall {settings.track_fall}
  rise {settings.track_rise}
}}
"""
        track_ref += "  track_script {\n    chk_vpn\n  }\n"
    instances = "".join(
        _instance(name, router_id, iface, vip, prefixlen, own_ip, peer_ip, node, settings, track_ref)
        for name, router_id, iface, vip, prefixlen, own_ip, peer_ip in (
            (WAN_INSTANCE, settings.wan_router_id, node.wan_iface, node.wan_vip, node.wan_prefixlen,
             node.wan_ip, node.peer_wan_ip),
            (LAN_INSTANCE, settings.lan_router_id, node.lan_iface, node.lan_vip, node.lan_prefixlen,
             node.lan_ip, node.peer_lan_ip)))
    return f"""# written by space_vpn_lab.keepalived for lab gateway {node.name}
global_defs {{
  router_id {node.name}
  vrrp_version 3
  script_user root
  enable_script_security
  # The master re-announces its addresses: after a split brain the LAN and the far end
  # learn within this long which node kept them.
  vrrp_garp_master_refresh {GARP_REFRESH_S}
}}
{track_def}
vrrp_sync_group {SYNC_GROUP} {{
  group {{
    {WAN_INSTANCE}
    {LAN_INSTANCE}
  }}
  notify {_quote(notify_script)}
}}
{instances}"""


def _instance(name: str, router_id: int, iface: str, vip: str, prefixlen: int, own_ip: str, peer_ip: str,
              node: VrrpNode, settings: VrrpSettings, track_ref: str) -> str:
    unicast = (f"  unicast_src_ip {own_ip}\n  unicast_peer {{\n    {peer_ip}\n  }}\n"
               if settings.unicast else "")
    nopreempt = "" if settings.preempt else "  nopreempt\n"
    return f"""
vrrp_instance {name} {{
  state BACKUP
  interface {iface}
  virtual_router_id {router_id}
  priority {node.priority}
  advert_int {settings.advert_int_s:g}
{nopreempt}{unicast}  virtual_ipaddress {{
    {vip}/{prefixlen} dev {iface}
  }}
{track_ref}}}
"""


def _quote(path: str) -> str:
    if '"' in path:
        raise ValueError(f"keepalived script path with a quote: {path!r}")
    return f'"{path}"'


def render_notify_script(events_path: str, agentctl: Sequence[str] | None = None,
                         env: Mapping[str, str] | None = None) -> str:
    """The sync group's notify script: keepalived runs it with `GROUP HA STATE PRIORITY`.
    It appends `UNIX_TIME GROUP STATE` to events_path and, given an agentctl argv (up to
    `--socket S`), tells the agent. No side effects."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in (env or {}).items())
    cases = " ".join(f"{word}) state={state};;" for word, state in AGENTCTL_STATES.items())
    tell = ""
    if agentctl:
        tell = (f'case "$3" in {cases} *) exit 0;; esac\n'
                f'exec {shlex.join(agentctl)} ha "$state" >>{shlex.quote(events_path + ".agentctl")} 2>&1\n')
    return f"""#!/bin/sh
# written by space_vpn_lab.keepalived: VRRP state changes with their time, then the agent
{exports}printf '%s %s %s\\n' "$(date +%s.%N)" "$2" "$3" >>{shlex.quote(events_path)}
{tell}"""


def render_track_script(argv: Sequence[str]) -> str:
    return f"#!/bin/sh\n# written by space_vpn_lab.keepalived: exit 0 = healthy\nexec {shlex.join(argv)} >/dev/null 2>&1\n"


@dataclass(frozen=True)
class VrrpEvent:
    unix: float
    state: str


def parse_events(text: str) -> list[VrrpEvent]:
    """The notify script's lines, in order; unreadable ones are skipped."""
    events = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            with contextlib.suppress(ValueError):
                events.append(VrrpEvent(float(parts[0]), parts[2]))
    return events


class Keepalived:
    """keepalived for one gateway in `netns`, its files under `workdir` (named after it)."""

    def __init__(self, node_name: str, netns: str, workdir: Path, settings: VrrpSettings | None = None) -> None:
        self.node_name = node_name
        self.netns = netns
        self.workdir = workdir
        self.settings = settings or VrrpSettings()
        self._proc: subprocess.Popen | None = None
        base = f"{node_name}.keepalived"
        self.conf_path = workdir / f"{base}.conf"
        self.log_path = workdir / f"{base}.log"
        self.events_path = workdir / f"{base}.events"
        self.notify_path = workdir / f"{base}.notify.sh"
        self.track_path = workdir / f"{base}.track.sh"
        self.pid_path = workdir / f"{base}.pid"
        self.vrrp_pid_path = workdir / f"{base}.vrrp.pid"

    def write(self, node: VrrpNode, agentctl: Sequence[str] | None = None,
              track: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
              track_file: str | None = None) -> None:
        """Config, notify script and (given `track`, an argv) the track script."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        _write_executable(self.notify_path, render_notify_script(str(self.events_path), agentctl, env))
        if track:
            _write_executable(self.track_path, render_track_script(track))
        self.conf_path.write_text(render_config(node, self.settings, str(self.notify_path),
                                                str(self.track_path) if track else None, track_file))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start keepalived (VRRP only, foreground, own pid files, log to a file) and
        return once its VRRP process runs."""
        if self.running:
            raise RuntimeError(f"keepalived {self.node_name} already running")
        for path in (self.pid_path, self.vrrp_pid_path, self.events_path):
            path.unlink(missing_ok=True)
        # -n no fork (the Popen pid is keepalived's: ip netns exec execs), -l -G log to
        # stderr only, -D detail, -P VRRP only (no checker process).
        argv = ["ip", "netns", "exec", self.netns, BINARY, "-n", "-l", "-G", "-D", "-P",
                "-f", str(self.conf_path), "-p", str(self.pid_path), "-r", str(self.vrrp_pid_path)]
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._vrrp_pid() is None:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"keepalived {self.node_name} did not start; see {self.log_path}")
            time.sleep(0.02)
        log.info("keepalived %s started in %s (pid %s)", self.node_name, self.netns, self._proc.pid)

    def _vrrp_pid(self) -> int | None:
        try:
            pid = int(self.vrrp_pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop(self) -> None:
        """SIGTERM: keepalived sends priority 0 and removes its VIPs; SIGKILL if it hangs."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("keepalived %s ignored SIGTERM", self.node_name)
        self.kill()

    def kill(self) -> None:
        """As a power cut: both processes frozen first (the parent would respawn its
        child, and the child would shut down cleanly on its parent's death), then killed."""
        parent = self._proc.pid if self._proc is not None and self._proc.poll() is None else None
        pids = [p for p in (parent, self._vrrp_pid()) if p]
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if self._proc is not None:
            self._proc.wait(STOP_GRACE_S)
            self._proc = None
        for path in (self.pid_path, self.vrrp_pid_path):
            path.unlink(missing_ok=True)

    def events(self) -> list[VrrpEvent]:
        """This run's state changes (start() clears the file)."""
        try:
            return parse_events(self.events_path.read_text())
        except FileNotFoundError:
            return []

    def state(self) -> str | None:
        """The last state the notify script recorded (None: none yet, or not running)."""
        if not self.running:
            return None
        events = self.events()
        return events[-1].state if events else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _write_executable(path: Path, text: str) -> None:
    path.write_text(text)
    # keepalived's script security refuses scripts others may write.
    path.chmod(0o700)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
