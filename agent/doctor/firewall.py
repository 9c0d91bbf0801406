"""The doctor's firewall check: reads the nftables ruleset (`nft -j list ruleset`) and
reports base input/output chains that would drop IKE (UDP 500/4500) or ESP. Pure: the
ruleset text comes in, a Check goes out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from agent.core.model import VpnConnection
from agent.doctor.checks import OK, WARN, Check

_IKE_ITEMS = ("UDP 500", "UDP 4500", "ESP")


def tunnel_ips(vpns: Iterable[VpnConnection]) -> list[str]:
    return sorted({t.ip for vpn in vpns for t in vpn.tunnels})


def check_firewall(nft_result: tuple[int, str, str] | None, error: str | None, ips: list[str]) -> Check:
    """`nft_result` is (returncode, stdout, stderr) of `nft -j list ruleset`."""
    where = ", ".join(ips) if ips else "both tunnel IPs"
    fix = f"allow UDP 500, UDP 4500 and ESP (protocol 50) to and from {where}"
    if nft_result is None:
        return Check("firewall", WARN, f"cannot inspect: {error}", "install nftables, or check by hand: " + fix)
    code, out, err = nft_result
    if code != 0:
        reason = (err.strip().splitlines() or ["nft failed"])[0]
        return Check("firewall", WARN, f"cannot inspect: nft: {reason}", "run doctor as root, or check by hand: " + fix)
    try:
        blocked = blocked_ike(parse_ruleset(out))
    except ValueError as e:
        return Check("firewall", WARN, f"cannot inspect: {e}", "check by hand: " + fix)
    if not blocked:
        return Check("firewall", OK, "no input/output chain drops UDP 500/4500 or ESP (nftables)")
    return Check("firewall", WARN, "; ".join(blocked), fix)


@dataclass(frozen=True)
class _Chain:
    label: str  # "inet filter input"
    hook: str
    policy: str
    rules: tuple[list, ...]  # the "expr" list of each rule, in order


def parse_ruleset(text: str) -> list[_Chain]:
    """The base chains of an `nft -j list ruleset` document; ValueError if it is not one."""
    try:
        items = json.loads(text or '{"nftables": []}')["nftables"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unexpected nft output ({type(e).__name__})") from e
    chains, rules = {}, {}
    for item in items:
        if not isinstance(item, dict):
            continue
        if "chain" in item and item["chain"].get("hook"):
            c = item["chain"]
            chains[(c.get("family"), c.get("table"), c.get("name"))] = c
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r.get("family"), r.get("table"), r.get("chain")), []).append(r.get("expr") or [])
    return [_Chain(" ".join(str(k) for k in key), c["hook"], c.get("policy", "accept"), tuple(rules.get(key, ())))
            for key, c in chains.items() if key[0] in ("ip", "inet")]


def blocked_ike(chains: list[_Chain]) -> list[str]:
    """Conservative: an item counts as allowed only after an accept that names it (or an
    unconditional accept); `ct state established` accepts do not count."""
    found = []
    for chain in chains:
        if chain.hook not in ("input", "output"):
            continue
        allowed, dropped = set(), set()
        for expr in chain.rules:
            verdict, items = _rule_effect(expr)
            if verdict == "accept":
                allowed |= items
            elif verdict in ("drop", "reject"):
                dropped |= items - allowed
        if chain.policy == "drop":
            dropped |= set(_IKE_ITEMS) - allowed
        if dropped:
            what = ", ".join(i for i in _IKE_ITEMS if i in dropped)
            cause = "policy drop without an accept for" if chain.policy == "drop" else "a rule drops"
            found.append(f"{chain.label}: {cause} {what}")
    return found


def _rule_effect(expr: list) -> tuple[str | None, set[str]]:
    """(verdict, which of _IKE_ITEMS the rule's matches cover)."""
    verdict, items, matched = None, set(_IKE_ITEMS), False
    for statement in expr:
        if not isinstance(statement, dict):
            continue
        for key in ("accept", "drop", "reject"):
            if key in statement:
                verdict = key
        if "match" in statement:
            matched = True
            items &= _match_items(statement["match"])
    return verdict, (items if matched else set(_IKE_ITEMS))


def _match_items(match: dict) -> set[str]:
    left, right = match.get("left") or {}, match.get("right")
    if match.get("op", "==") not in ("==", "in"):
        return set()  # negations and ranges: not understood, so not counted
    values = right.get("set", []) if isinstance(right, dict) else right if isinstance(right, list) else [right]
    values = {str(v).lower() for v in values if not isinstance(v, dict)}
    payload, meta = left.get("payload") or {}, left.get("meta") or {}
    if payload.get("field") == "dport" and payload.get("protocol") in ("udp", "th"):
        return {f"UDP {p}" for p in ("500", "4500") if p in values}
    if payload.get("field") == "protocol" or meta.get("key") == "l4proto":
        return ({"ESP"} if values & {"esp", "50"} else set()) | (
            {"UDP 500", "UDP 4500"} if values & {"udp", "17"} else set())
    return set()
