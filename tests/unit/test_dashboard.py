"""packaging/monitoring/dashboard.json is a Grafana dashboard one can import as it is:
templated on the data source, the space and the VPN, no data source uid of anyone's
Grafana, every panel with a query, laid out on Grafana's 24-column grid without
overlaps. Whether the queries return data is the lab's question
(tests/lab/test_monitoring_lab.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "packaging" / "monitoring" / "dashboard.json"
#: Agent-wide families: no space or vpn label to filter on.
AGENT_WIDE = ("space_vpn_api_rate_limit_remaining", "space_vpn_api_poll_interval_seconds")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def test_templated_on_the_data_source_the_space_and_the_vpn():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "label_values(space_vpn_connection_health, space)" in json.dumps(variables["space"]["query"])
    assert variables["vpn"]["multi"] and variables["vpn"]["includeAll"]
    uids = [(path, node["uid"]) for path, node in walk(board) if isinstance(node, dict)
            and node.get("type") == "prometheus" and "uid" in node]
    assert uids and all(uid == "${datasource}" for _, uid in uids), uids
    assert board["uid"] == "space-vpn-agent" and board["title"]


def test_every_panel_queries_and_filters_by_connection():
    board = dashboard()
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            for selector in re.findall(r"(space_vpn_\w+)(\{[^}]*\})?", expr):
                name, labels = selector
                if name not in AGENT_WIDE:
                    assert 'space=~"$space"' in labels and 'vpn=~"$vpn"' in labels, (panel["title"], expr)
    failovers = board["annotations"]["list"][0]
    assert "space_vpn_failovers_total" in failovers["expr"] and failovers["enable"]


def test_panels_sit_on_the_grid_without_overlapping():
    cells: set[tuple[int, int]] = set()
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
