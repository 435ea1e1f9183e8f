from __future__ import annotations

import yaml
from openapi_spec_validator import validate

from volt.config import load_config
from volt.control_api.app import create_app
from volt.control_api.hot_path import HotPath
from volt.control_api.openapi import OPERATIONS, build_document, render_yaml


def test_the_document_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(render_yaml("0.0.0"))
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_route_the_app_serves_is_documented_and_nothing_else() -> None:
    app = create_app(load_config(env={}))
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<path:model_id>", "{model_id}").replace("<job_id>", "{job_id}")
        served |= {(method.lower(), path) for method in rule.methods or () if method != "HEAD"}
    served |= HotPath.ROUTES
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert served == documented


def test_request_schema_is_the_validating_type() -> None:
    schemas = build_document("0")["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]
    assert set(request["required"]) == {"model", "messages"}
    assert request["properties"]["messages"]["minItems"] == 1
    assert "volt" in request["properties"]
    assert "VoltBlock" in schemas
