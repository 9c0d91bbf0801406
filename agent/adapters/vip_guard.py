"""The split-brain guard's eyes (core/ha.split_brain decides): once a second, for each
HA virtual address, an RFC 5227 ARP probe on the interface that holds it (or held it
last), and the MACs of every other host that answers; plus whether VRRP adverts from
another host still arrive at all (one raw socket for IP protocol 112).

One thread; sockets need CAP_NET_RAW (the unit grants it). Without it the guard says
so once and stops, and the node never yields (core/ha: a stale probe is no evidence).
Every read is bounded: at most _MAX_FRAMES frames per probe window.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.adapters.arp import ETH_P_ARP, VRRP_PROTO, probe_frame, replier, vrrp_source
from agent.core.ha import VipProbe

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
ANSWER_WINDOW_S = 0.15  # a host on the same segment answers in well under a millisecond
_MAX_FRAMES = 256
_READ = 2048


@dataclass(frozen=True)
class VipProbed:
    """The guard's latest look at one virtual address (the loop keeps the newest)."""

    address: str
    probe: VipProbe


@dataclass(frozen=True)
class _Holder:
    ifname: str
    index: int
    mac: str


class VipGuard:
    def __init__(self, post: Callable[[object], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._post = post
        self._clock = clock
        self._addresses: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vip-guard", daemon=True)
        self._last_iface: dict[str, _Holder] = {}  # address -> where it was last seen here
        self._vrrp_heard_at: float | None = None

    def watch(self, addresses: Iterable[str]) -> None:
        """The virtual addresses to guard (a reload may change them)."""
        with self._lock:
            self._addresses = tuple(sorted(set(addresses)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        try:
            vrrp = socket.socket(socket.AF_INET, socket.SOCK_RAW, VRRP_PROTO)
            ipr = IPRoute()
        except OSError as e:
            log.warning("ha: split-brain guard off: cannot open raw sockets (%s; needs CAP_NET_RAW)", e)
            return
        with vrrp, ipr:
            vrrp.setblocking(False)
            while not self._stop.wait(INTERVAL_S):
                with self._lock:
                    addresses = self._addresses
                try:
                    holders, own = self._holders(ipr)
                except (NetlinkError, OSError) as e:
                    log.debug("ha guard: reading addresses: %s", e)
                    continue
                self._drain_vrrp(vrrp, own)
                for address in addresses:
                    self._probe(address, holders.get(address))

    def _holders(self, ipr: IPRoute) -> tuple[dict[str, _Holder], set[str]]:
        macs = {link["index"]: (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_ADDRESS"))
                for link in ipr.get_links()}
        holders, own = {}, set()
        for message in ipr.get_addr(family=socket.AF_INET):
            address, (ifname, mac) = message.get_attr("IFA_ADDRESS"), macs.get(message["index"], (None, None))
            own.add(address)
            if ifname and mac and mac != "00:00:00:00:00:00":
                holders[address] = _Holder(ifname, message["index"], mac)
        return holders, own

    def _drain_vrrp(self, sock: socket.socket, own: set[str]) -> None:
        for _ in range(_MAX_FRAMES):
            try:
                packet = sock.recv(_READ)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("ha guard: VRRP socket: %s", e)
                return
            source = vrrp_source(packet)
            if source is not None and source not in own:
                self._vrrp_heard_at = self._clock()

    def _probe(self, address: str, holder: _Holder | None) -> None:
        if holder is not None:
            self._last_iface[address] = holder
        holder = holder or self._last_iface.get(address)
        if holder is None:
            return  # never on this host: it has nothing to yield
        try:
            others = self._ask(address, holder)
        except OSError as e:
            log.debug("ha guard: probing %s on %s: %s", address, holder.ifname, e)
            return
        self._post(VipProbed(address, VipProbe(self._clock(), holder.mac, frozenset(others), self._vrrp_heard_at)))

    @staticmethod
    def _ask(address: str, holder: _Holder) -> set[str]:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
            sock.bind((holder.ifname, ETH_P_ARP))
            sock.setblocking(False)
            sock.send(probe_frame(holder.mac, address))
            others: set[str] = set()
            deadline = time.monotonic() + ANSWER_WINDOW_S
            for _ in range(_MAX_FRAMES):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                try:
                    frame = sock.recv(_READ)
                except BlockingIOError:
                    continue
                mac = replier(frame, address, holder.mac)
                if mac is not None:
                    others.add(mac)
            return others
