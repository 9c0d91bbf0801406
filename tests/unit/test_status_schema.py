"""The status document agrees with its published JSON schema."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest

from tests.unit.test_render import BUDGET, DEGRADED, DOWN, DRAINED, OK, ROUTE

SCHEMA = json.loads(resources.files("agent.control").joinpath("status.schema.json").read_text())


def test_the_schema_itself_is_valid():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("snap", [OK, DEGRADED, DOWN, ROUTE, DRAINED, BUDGET],
                         ids=["ok", "degraded", "down", "route", "drained", "budget"])
def test_status_documents_validate(snap):
    jsonschema.validate(json.loads(json.dumps(snap.to_dict())), SCHEMA)


def test_an_unknown_field_is_caught():
    document = json.loads(json.dumps(OK.to_dict()))
    document["connections"][0]["tunnels"][0]["psk"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_an_api_budget_must_be_complete():
    document = json.loads(json.dumps(BUDGET.to_dict()))
    del document["api_budget"]["stretched"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)


def test_every_kind_of_failover_is_a_valid_status():
    """The schema lists failover kinds by name: each one the agent records must validate."""
    from agent.core.failover import FailoverKind

    assert set(SCHEMA["$defs"]["failover"]["properties"]["kind"]["enum"]) == {kind.value for kind in FailoverKind}
