"""Schemathesis over Volt's own OpenAPI document, against a running cluster.

Every documented operation gets generated requests — valid ones and ones that
break the schema — with the dev org's owner key, and every answer must be what
the document says: never a 5xx, a documented status, the documented content
type and a body its schema accepts (schemathesis's default checks). Streams
are checked too: each server-sent event against the ``x-itemSchema`` the
document gives its ``text/event-stream`` content.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator

from volt.control_api.openapi import build_document
from volt.testing import Cluster

DOCUMENT = build_document("0")
schema = schemathesis.openapi.from_dict(DOCUMENT)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("schemathesis"), engine_mode="instant",
                 model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        yield cluster


def events(body: str) -> list[str]:
    """The ``data`` of each server-sent event."""
    return [line.removeprefix("data:").strip() for line in body.split("\n\n") if line.strip()
            for line in line.splitlines() if line.startswith("data:")]


def check_stream(path: str, method: str, body: str) -> None:
    item: dict[str, Any] = DOCUMENT["paths"][path][method]["responses"]["200"]["content"][
        "text/event-stream"]["x-itemSchema"]
    json_form = item["properties"]["data"]["oneOf"][1]
    # The refs point into the document: validate with its components at the root.
    validator = Draft202012Validator({**json_form["contentSchema"],
                                      "components": DOCUMENT["components"]})
    data = events(body)
    assert data, body
    assert data[-1] == "[DONE]", data[-1]
    for event in data[:-1]:
        validator.validate(json.loads(event))


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, api: Cluster) -> None:
    response = case.call(base_url=f"http://127.0.0.1:{api.api_port}",
                         headers={"Authorization": f"Bearer {api.api_key}"}, timeout=60)
    case.validate_response(response)
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        check_stream(case.operation.path, case.method.lower(), response.text)
