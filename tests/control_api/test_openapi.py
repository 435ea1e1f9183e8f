from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

from volt.config import load_config
from volt.control_api.app import create_app, template
from volt.control_api.hot_path import HotPath
from volt.control_api.openapi import OPERATIONS, build_document, render_yaml
from volt.identity.policy import RULES


def test_the_document_is_valid_openapi_3_2() -> None:
    """3.2: its ``itemSchema`` describes each server-sent event of a stream."""
    document = yaml.safe_load(render_yaml("0.0.0"))
    assert document["openapi"] == "3.2.0"
    validate(document)


def served_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the API serves."""
    app = create_app(load_config(env={"VOLT_DATA_DIR": str(tmp_path)}))
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        served |= {(method.lower(), template(rule.rule)) for method in rule.methods or ()
                   if method != "HEAD"}
    return served | HotPath.ROUTES


def test_every_route_the_app_serves_is_documented_and_nothing_else(tmp_path: Path) -> None:
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert served_routes(tmp_path) == documented


def test_every_route_has_an_access_and_audit_rule_and_nothing_else(tmp_path: Path) -> None:
    assert served_routes(tmp_path) == {(method.lower(), path) for method, path in RULES}


def test_request_schema_is_the_validating_type() -> None:
    schemas = build_document("0")["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]
    assert set(request["required"]) == {"model", "messages"}
    assert request["properties"]["messages"]["minItems"] == 1
    assert "volt" in request["properties"]
    assert "VoltBlock" in schemas
