"""TCP MSS clamping on the route-mode tunnel interfaces, as one nftables table that
the agent owns (`inet space_vpn_agent`), replaced atomically whenever it changes.

AWS tunnels do no path MTU discovery; clamping SYNs keeps TCP inside the tunnel MTU.
The nft command is driven with a ruleset on stdin (no secrets involved).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

log = logging.getLogger(__name__)

TABLE = "space_vpn_agent"
# Children get a bare environment: HEROKU_API_KEY (if the token came that way) stays ours.
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


class MssClampError(Exception):
    """nft refused the ruleset or is not installed."""


def ruleset(rules: dict[str, int]) -> str:
    """The whole table for `rules` (interface -> MSS); empty rules delete the table.

    `table; delete table; table {...}` runs as one transaction: no moment without rules."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}"]
    if not rules:
        return "\n".join(lines) + "\n"
    # forward: both ways through the gateway; output/input: the gateway's own TCP.
    directions = {"forward": ("oifname", "iifname"), "output": ("oifname",), "input": ("iifname",)}
    chains = []
    for hook, matches in directions.items():
        body = [
            f'    {match} "{ifname}" tcp flags & (syn | rst) == syn '
            f"tcp option maxseg size > {mss} tcp option maxseg size set {mss}"
            for ifname, mss in sorted(rules.items())
            for match in matches
        ]
        chains.append(f"  chain {hook} {{\n    type filter hook {hook} priority mangle; policy accept;\n"
                      + "\n".join(body) + "\n  }")
    lines.append(f"table inet {TABLE} {{\n" + "\n".join(chains) + "\n}")
    return "\n".join(lines) + "\n"


class MssClamp:
    """Keeps the table equal to the last rules asked for; re-applies after a restart."""

    def __init__(self, nft: str | None = None) -> None:
        self._nft = nft or shutil.which("nft") or "/usr/sbin/nft"
        self._applied: dict[str, int] | None = None  # last rules tried, applied or not

    def sync(self, rules: dict[str, int]) -> bool:
        """Apply when different from what this process tried last (a failure is reported
        once, not every pass). True if applied."""
        if rules == self._applied:
            return False
        self._applied = dict(rules)
        try:
            result = subprocess.run([self._nft, "-f", "-"], input=ruleset(rules), text=True,
                                    capture_output=True, timeout=10, env=CHILD_ENV)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MssClampError(f"cannot run {self._nft} (install nftables for MSS clamping): {e}") from e
        if result.returncode != 0:
            raise MssClampError(f"nft refused the MSS clamping rules: {result.stderr.strip()}")
        return True
