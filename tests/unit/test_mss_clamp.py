"""MSS clamping drives nft with a ruleset on stdin and a bare environment."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from agent.adapters.mss_clamp import MssClamp, ruleset


def fake_nft(tmp_path: Path) -> tuple[str, Path]:
    """A stand-in for nft that records its environment and stdin."""
    record = tmp_path / "record.json"
    script = tmp_path / "nft"
    script.write_text("#!/usr/bin/python3\nimport json, os, sys\n"
                      f"json.dump({{'env': dict(os.environ), 'stdin': sys.stdin.read()}}, open({str(record)!r}, 'w'))\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), record


def test_children_never_inherit_the_token(tmp_path, monkeypatch):
    monkeypatch.setenv("HEROKU_API_KEY", "HRKU-must-not-leak")
    nft, record = fake_nft(tmp_path)
    assert MssClamp(nft=nft).sync({"svoffice1234-1": 1379}) is True
    seen = json.loads(record.read_text())
    assert "HEROKU_API_KEY" not in seen["env"] and "HRKU-must-not-leak" not in json.dumps(seen)
    assert seen["stdin"] == ruleset({"svoffice1234-1": 1379})
    assert os.environ["HEROKU_API_KEY"] == "HRKU-must-not-leak"  # ours is untouched


def test_same_rules_are_not_applied_twice(tmp_path):
    nft, record = fake_nft(tmp_path)
    clamp = MssClamp(nft=nft)
    assert clamp.sync({"a": 1379}) is True
    record.unlink()
    assert clamp.sync({"a": 1379}) is False and not record.exists()
    assert "delete table inet space_vpn_agent" in ruleset({}) and "chain" not in ruleset({})
