"""One real charon daemon inside a lab namespace, with its own strongswan.conf,
VICI socket and log file under a work directory.

Each instance gets a private tmpfs on /run (mount namespace) so pid files of
several charons on one host never collide (shared/lab-recipe.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import vici

log = logging.getLogger(__name__)

#: charon-systemd reads the `charon-systemd` section, falling back to `charon`
#: (checked on 5.9.8: plugins, vici socket and filelog all come from `charon`).
DEFAULT_BINARY = "/usr/sbin/charon-systemd"
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 5.0
_SUN_PATH_MAX = 107

# kernel-libipsec: the host lab kernel has no ESP, so ESP runs in userspace over TUN;
# in the kernel lab (a VM with Debian's kernel) it stays off and kernel-netlink does ESP.
# resolve: would rewrite resolv.conf on DNS attributes; the lab never wants that.
# flush_line: without it the filelog is block-buffered and looks empty for a long time.
_CONF_TEMPLATE = """\
# written by space_vpn_lab.charon_instance for lab instance {name}
charon {{
  load_modular = yes
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{
      load = {libipsec}
    }}
    resolve {{
      load = no
    }}
    vici {{
      load = yes
      socket = unix://{socket}
    }}
  }}
  filelog {{
    lab {{
      path = {log}
      time_format = %H:%M:%S
      time_add_ms = yes
      ike_name = yes
      append = yes
      flush_line = yes
      default = 1
      ike = 2
      cfg = 1
      knl = 1
    }}
  }}
{extra}}}
"""


class CharonError(Exception):
    """The lab charon could not be started or reached."""


class CharonInstance:
    """A charon process in `netns`; files live in `workdir`. Call `start()`."""

    def __init__(self, name: str, netns: str, workdir: str | os.PathLike,
                 binary: str = DEFAULT_BINARY, extra_conf: str = "",
                 start_timeout_s: float = START_TIMEOUT_S, kernel_ipsec: bool = False) -> None:
        self.name = name
        #: True: ESP in the kernel through kernel-netlink (needs CONFIG_INET_ESP);
        #: False: userspace ESP through kernel-libipsec (the host lab).
        self.kernel_ipsec = kernel_ipsec
        self.netns = netns
        self.workdir = Path(workdir)
        self.binary = binary
        self.extra_conf = extra_conf
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen | None = None
        self.conf_path = self.workdir / f"{name}.strongswan.conf"
        self.vici_socket = str(self.workdir / f"{name}.vici")
        self.log_path = self.workdir / f"{name}.log"
        self.stdout_path = self.workdir / f"{name}.stdout"
        if len(self.vici_socket) > _SUN_PATH_MAX:
            raise CharonError(f"vici socket path too long for AF_UNIX: {self.vici_socket}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def write_conf(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = _CONF_TEMPLATE.format(name=self.name, socket=self.vici_socket,
                                     log=self.log_path, extra=self.extra_conf,
                                     libipsec="no" if self.kernel_ipsec else "yes")
        self.conf_path.write_text(text)

    def start(self) -> None:
        """Start charon and return once its VICI socket answers; nothing is left
        running if that does not happen within start_timeout_s."""
        if self.running:
            raise CharonError(f"charon {self.name} already running (pid {self.pid})")
        self.write_conf()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vici_socket)
        began = time.monotonic()
        self._spawn()
        try:
            self._wait_ready()
        except BaseException:
            self._reap(signal.SIGKILL)
            raise
        log.info("charon %s started in %s (pid %s) in %.2f s", self.name, self.netns,
                 self.pid, time.monotonic() - began)

    def _spawn(self) -> None:
        env = dict(os.environ, STRONGSWAN_CONF=str(self.conf_path))
        # sh gets the binary as $0 so no path is ever spliced into a shell string;
        # `ip netns exec`, unshare and sh all exec, so the Popen pid is charon's pid.
        argv = ["ip", "netns", "exec", self.netns, "unshare", "-m", "sh", "-c",
                'mount -t tmpfs none /run && exec "$0"', self.binary]
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise CharonError(f"charon {self.name} exited with {self._proc.returncode}; "
                                  f"see {self.log_path} and {self.stdout_path}")
            try:
                with self.connected(timeout_s=1.0) as session:
                    session.version()
                return
            except (OSError, vici.exception.SessionException) as e:
                last_error = e
            time.sleep(0.05)
        raise CharonError(f"charon {self.name} VICI socket not answering after "
                          f"{self.start_timeout_s} s: {last_error}")

    def session(self, timeout_s: float | None = None) -> vici.Session:
        """A new VICI session (one per thread; one command at a time)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(self.vici_socket)
        except OSError:
            sock.close()
            raise
        return vici.Session(sock)

    @contextlib.contextmanager
    def connected(self, timeout_s: float | None = None) -> Iterator[vici.Session]:
        """A session for the span of a `with` block; its socket is closed afterwards."""
        session = self.session(timeout_s)
        try:
            yield session
        finally:
            session.transport.close()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, wait up to grace_s, then SIGKILL. Safe to call when not running."""
        if self._proc is None:
            return
        pid = self.pid
        self._reap(signal.SIGTERM, grace_s)
        log.info("charon %s (pid %s) stopped", self.name, pid)

    def kill(self) -> None:
        """SIGKILL, as a crash would: charon gets no chance to send DELETEs."""
        if self._proc is None:
            return
        pid = self.pid
        self._reap(signal.SIGKILL)
        log.info("charon %s (pid %s) killed", self.name, pid)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _reap(self, sig: signal.Signals, grace_s: float = STOP_GRACE_S) -> None:
        proc, self._proc = self._proc, None
        if proc.poll() is None:
            _send(proc.pid, sig)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("charon %s (pid %s) ignored %s, sending SIGKILL",
                            self.name, proc.pid, sig.name)
                _send(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace_s)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vici_socket)


def _send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass

