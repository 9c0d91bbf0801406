"""Kernel lab scenarios, run INSIDE a virtme-ng VM booting Debian's kernel (kernel ESP,
XFRM interfaces): `python -m space_vpn_lab.kernel_scenarios --results DIR [--only NAME ...]`.
Each `@scenario` records checks through its context; DIR/results.json is rewritten after
every scenario, so a VM that times out still leaves what was done. Started by kernel_vm.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from space_vpn_lab.lab import Lab
from space_vpn_lab.space_side import PROPOSAL, TunnelSas, summarize_ike_sas
from space_vpn_lab.topology import (CUSTOMER_HOST_IP, CUSTOMER_PUBLIC_IP, ROUTABLE_CIDR,
                                    SPACE_CIDR, SPACE_HOST_IP, TUNNEL_IPS, ip)
from space_vpn_lab.traffic import PingResult, ping

log = logging.getLogger(__name__)

MODULES = ("esp4", "xfrm_user", "xfrm_interface", "veth")
#: Guest-local tmpfs for charon work dirs: unix sockets cannot live on the 9p share, and
#: not under /run either, since each lab charon mounts its own tmpfs over /run.
LOCAL_ROOT = Path("/tmp/svpn-klab")
RESULTS_FILE = "results.json"
INITIATE_TIMEOUT_MS = 20_000
#: Customer-side XFRM interfaces (route mode), by tunnel number: name, if_id.
CUSTOMER_XFRM = {1: ("xfrm1", 1), 2: ("xfrm2", 2)}
CUSTOMER_VETH = "vc"

Scenario = Callable[["ScenarioContext"], None]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario; they run in registration order."""
    def register(func: Scenario) -> Scenario:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name} registered twice")
        SCENARIOS[name] = func
        return func
    return register


class ResultsWriter:
    """Owns results.json: {"kernel", "complete", "scenarios": {name: {"seconds", "checks"}}}."""

    def __init__(self, path: Path, kernel: str) -> None:
        self.path = path
        self.data: dict = {"kernel": kernel, "complete": False, "scenarios": {}}

    def begin(self, name: str) -> list[dict]:
        entry = {"seconds": 0.0, "checks": []}
        self.data["scenarios"][name] = entry
        return entry["checks"]

    def end(self, name: str, seconds: float) -> None:
        self.data["scenarios"][name]["seconds"] = round(seconds, 2)
        self.write()

    def finish(self) -> None:
        self.data["complete"] = True
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)


class ScenarioContext:
    """What a scenario gets: a guest-local work dir, a netns prefix, and `check()`."""

    def __init__(self, name: str, index: int, checks: list[dict], workdir: Path) -> None:
        self.name = name
        self.prefix = f"k{index}"
        self.workdir = workdir
        self._checks = checks

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self._checks.append({"name": name, "ok": bool(ok), "detail": detail})
        log.info("[%s] %s %s: %s", self.name, "PASS" if ok else "FAIL", name, detail)
        return bool(ok)

    def lab(self, **options) -> Lab:
        """A kernel-ESP lab in this scenario's work dir (use as a context manager)."""
        return Lab(self.workdir / "lab", prefix=self.prefix, kernel_ipsec=True, **options)


# --- helpers for scenarios (also for the agent-driven ones) -------------------------

def xfrm_stat(netns: str) -> dict[str, int]:
    """/proc/net/xfrm_stat as seen inside `netns` (the counters are per namespace)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "cat", "/proc/net/xfrm_stat"],
                         check=True, capture_output=True, text=True).stdout
    return {key: int(value) for key, value in (line.split() for line in out.splitlines() if line.strip())}


def stat_growth(before: dict[str, int], after: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def customer_ping(lab: Lab, count: int = 5, interval: float = 0.2) -> PingResult:
    """LAN host to space host through whichever tunnel the customer routes/policies pick."""
    return ping(lab.topology.cust_ns, CUSTOMER_HOST_IP, SPACE_HOST_IP, count=count, interval=interval)


def customer_sas(lab: Lab) -> dict[str, TunnelSas]:
    """Customer charon's list-sas reduced per IKE SA name (e.g. "cust-t1")."""
    with lab.customer_charon.connected() as session:
        entries = list(session.list_sas())
    grouped: dict[str, list[dict]] = {}
    for entry in entries:
        for name, ike in entry.items():
            grouped.setdefault(name, []).append(ike)
    return {name: summarize_ike_sas(ikes) for name, ikes in grouped.items()}


def customer_conn_name(number: int) -> str:
    return f"cust-t{number}"


def load_customer_tunnel(lab: Lab, number: int, if_id: int | None = None) -> None:
    """Configure tunnel `number` on the customer charon by hand, as the agent would
    (seed settings). The PSK goes inline: no local variable ever holds it."""
    name = customer_conn_name(number)
    tunnel_ip = TUNNEL_IPS[number - 1]
    child = {"local_ts": [ROUTABLE_CIDR], "remote_ts": [SPACE_CIDR],
             "esp_proposals": [PROPOSAL], "start_action": "none"}
    if if_id is not None:
        child.update(if_id_in=str(if_id), if_id_out=str(if_id))
    with lab.customer_charon.connected() as session:
        session.load_shared({"id": name, "type": "IKE", "data": lab.psks[number - 1],
                             "owners": [CUSTOMER_PUBLIC_IP, tunnel_ip]})
        session.load_conn({name: {
            "version": str(lab.ike_version), "local_addrs": [CUSTOMER_PUBLIC_IP],
            "remote_addrs": [tunnel_ip], "proposals": [PROPOSAL],
            "dpd_delay": "10s", "dpd_timeout": "30s",
            "local": {"auth": "psk", "id": CUSTOMER_PUBLIC_IP},
            "remote": {"auth": "psk", "id": tunnel_ip},
            "children": {name: child},
        }})


def initiate(lab: Lab, number: int) -> None:
    name = customer_conn_name(number)
    with lab.customer_charon.connected() as session:
        # Streamed: nothing is sent until drained; the timeout bounds it.
        list(session.initiate({"child": name, "ike": name, "timeout": INITIATE_TIMEOUT_MS}))


def terminate_child(lab: Lab, number: int) -> None:
    with lab.customer_charon.connected() as session:
        list(session.terminate({"child": customer_conn_name(number), "timeout": 5000}))


def add_customer_xfrm(lab: Lab, number: int) -> str:
    ifname, if_id = CUSTOMER_XFRM[number]
    ns = lab.topology.cust_ns
    ip("-n", ns, "link", "add", ifname, "type", "xfrm", "dev", CUSTOMER_VETH, "if_id", str(if_id))
    ip("-n", ns, "link", "set", ifname, "up")
    return ifname


def out_policy_gateways(netns: str) -> list[str]:
    """Tunnel endpoints the outbound XFRM policies point at (one per policy)."""
    out = ip("-n", netns, "xfrm", "policy", "list", "dir", "out").stdout
    return re.findall(r"tmpl src \S+ dst (\S+)", out)


def space_route_dev(lab: Lab) -> str:
    out = ip("-n", lab.topology.space_ns, "route", "show", ROUTABLE_CIDR).stdout
    match = re.search(r"\bdev (\S+)", out)
    return match.group(1) if match else ""


def children_installed(sas: dict[str, TunnelSas], names: list[str]) -> tuple[bool, str]:
    states = {n: sas[n].child_states if n in sas else None for n in names}
    ok = all(s is not None and "INSTALLED" in s for s in states.values())
    return ok, " ".join(f"{n}={states[n]}" for n in names)


def _tally(result: PingResult) -> str:
    return f"{result.received}/{result.transmitted} received"


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# --- scenarios ------------------------------------------------------------------------
# A new scenario (e.g. one driving the agent) is a function decorated with
# @scenario("name") that builds `ctx.lab(...)` and records `ctx.check(...)`; list its
# checks in tests/kernel/test_kernel_lab.py::EXPECTED.

@scenario("manual_route_mode")
def manual_route_mode(ctx: ScenarioContext) -> None:
    """Customer in route mode by hand: both tunnels up at once, replies accepted over
    either, and the route (not the link state) picks the outbound tunnel."""
    with ctx.lab(space_route_based=True) as lab:
        ns = lab.topology.cust_ns
        for number in (1, 2):
            add_customer_xfrm(lab, number)
            load_customer_tunnel(lab, number, if_id=CUSTOMER_XFRM[number][1])
            initiate(lab, number)
        for number, metric in ((1, "100"), (2, "200")):
            ip("-n", ns, "route", "add", SPACE_CIDR, "dev", CUSTOMER_XFRM[number][0],
               "metric", metric, "src", CUSTOMER_HOST_IP)
        ok, detail = children_installed(customer_sas(lab), ["cust-t1", "cust-t2"])
        ctx.check("children_installed", ok, detail)
        ctx.check("space_children_installed",
                  _wait_for(lambda: all(t.up for t in lab.space.sas().values())),
                  str(lab.space.sas()))

        before = xfrm_stat(ns)
        for number in (1, 2):
            lab.space.answer_via(number)
            result = customer_ping(lab)
            ctx.check(f"ping_answer_via_tunnel{number}", result.received == 5, _tally(result))
        after = xfrm_stat(ns)
        for key, check in (("XfrmInTmplMismatch", "no_tmpl_mismatch"), ("XfrmInNoPols", "no_in_no_pols")):
            grew = stat_growth(before, after, key)
            ctx.check(check, grew == 0, f"{key} grew by {grew}")

        _route_mode_silent_down(ctx, lab)


def _route_mode_silent_down(ctx: ScenarioContext, lab: Lab) -> None:
    """Silent loss of tunnel 1: the space answers over tunnel 2, the customer loses
    traffic until its route moves (the agent's job), then gets everything back."""
    lab.space.answer_via(1)
    lab.space.silent_down(1)
    dev = space_route_dev(lab)
    ctx.check("silent_down_moves_space_route", dev == "sx2", f"space route dev {dev}")
    lost = customer_ping(lab, count=3)
    ctx.check("silent_down_loses_until_route_moves", lost.received == 0, _tally(lost))
    ip("-n", lab.topology.cust_ns, "route", "del", SPACE_CIDR, "dev", CUSTOMER_XFRM[1][0])
    result = customer_ping(lab)
    ctx.check("ping_after_customer_route_moves", result.received == 5, _tally(result))


@scenario("manual_policy_mismatch")
def manual_policy_mismatch(ctx: ScenarioContext) -> None:
    """Why policy mode keeps ONE child: two children with identical selectors share one
    policy, and replies over the other tunnel fail the inbound template check."""
    with ctx.lab(space_route_based=True) as lab:
        ns = lab.topology.cust_ns
        for number in (1, 2):
            load_customer_tunnel(lab, number)
            initiate(lab, number)
        # Backstop in case charon installs no table-220 route: same path, main table.
        ip("-n", ns, "route", "replace", SPACE_CIDR, "via", "203.0.113.1", "src", CUSTOMER_HOST_IP)
        ok, detail = children_installed(customer_sas(lab), ["cust-t1", "cust-t2"])
        ctx.check("children_installed", ok, detail)

        gateways = out_policy_gateways(ns)
        ctx.check("one_shared_policy", len(gateways) == 1 and gateways[0] in TUNNEL_IPS,
                  f"outbound policy templates point at {gateways}")
        if not gateways or gateways[0] not in TUNNEL_IPS:
            return
        active = TUNNEL_IPS.index(gateways[0]) + 1
        other = 3 - active

        lab.space.answer_via(active)
        result = customer_ping(lab)
        ctx.check("ping_answer_via_policy_tunnel", result.received == 5,
                  f"tunnel {active}: {_tally(result)}")

        before = xfrm_stat(ns)
        lab.space.answer_via(other)
        result = customer_ping(lab)
        grew = stat_growth(before, xfrm_stat(ns), "XfrmInTmplMismatch")
        ctx.check("replies_via_other_tunnel_dropped", result.received == 0,
                  f"tunnel {other}: {_tally(result)}")
        ctx.check("tmpl_mismatch_grows", grew > 0, f"XfrmInTmplMismatch grew by {grew}")

        # With one child left the shared policy points at the tunnel the replies use.
        terminate_child(lab, active)
        repointed = _wait_for(lambda: out_policy_gateways(ns) == [TUNNEL_IPS[other - 1]], 5.0)
        ctx.check("policy_repointed", repointed, f"templates now {out_policy_gateways(ns)}")
        result = customer_ping(lab)
        ctx.check("one_child_restores_replies", result.received == 5,
                  f"child of tunnel {active} terminated: {_tally(result)}")


# --- runner -------------------------------------------------------------------------------

def load_modules() -> None:
    subprocess.run(["modprobe", "-a", *MODULES], check=True, capture_output=True, text=True)


def make_local_root(root: Path = LOCAL_ROOT) -> Path:
    """A fresh tmpfs for work dirs and unix sockets (never the 9p results share)."""
    root.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "none", str(root)], check=True)
    return root


def run_scenario(name: str, index: int, writer: ResultsWriter, local_root: Path,
                 results_dir: Path) -> None:
    """Run one scenario; a crash becomes a failed `crashed` check, never an abort."""
    checks = writer.begin(name)
    ctx = ScenarioContext(name, index, checks, local_root / name)
    began = time.monotonic()
    log.info("scenario %s: start", name)
    try:
        SCENARIOS[name](ctx)
    except Exception as e:  # noqa: BLE001 - recorded as a failed check, next scenario runs
        log.exception("scenario %s crashed", name)
        detail = "".join(traceback.format_exception_only(type(e), e)).strip()
        if isinstance(e, subprocess.CalledProcessError):
            detail += f" stderr: {(e.stderr or '').strip()[-300:]}"
        ctx.check("crashed", False, detail[-1000:])
    seconds = time.monotonic() - began
    _keep_logs(ctx.workdir, results_dir / name)
    writer.end(name, seconds)
    log.info("scenario %s: %.1f s", name, seconds)


def _keep_logs(workdir: Path, dest: Path) -> None:
    """Copy charon logs to the shared results dir for post-mortems (no keys in them)."""
    logs = list(workdir.rglob("*.log")) + list(workdir.rglob("*.stdout"))
    if not logs:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for path in logs:
        shutil.copyfile(path, dest / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="space_vpn_lab.kernel_scenarios")
    parser.add_argument("--results", required=True, type=Path, help="shared folder for results.json")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), metavar="NAME",
                        help="run only these scenarios (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    writer = ResultsWriter(args.results / RESULTS_FILE, os.uname().release)
    writer.write()
    load_modules()
    local_root = make_local_root()
    selected = [n for n in SCENARIOS if not args.only or n in args.only]
    for index, name in enumerate(selected, start=1):
        run_scenario(name, index, writer, local_root, args.results)
    writer.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
