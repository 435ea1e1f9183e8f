"""Schemathesis over Volt's own OpenAPI document, against a running cluster.

Every documented operation gets generated requests — valid ones and ones that
break the schema — with the dev org's owner key, and every answer must be what
the document says: a documented status, the documented content type, a body
its schema accepts, a 405 that says what is allowed (schemathesis's checks).
Streams are checked too: schemathesis checks each server-sent event against
the ``itemSchema`` the document gives ``text/event-stream`` (OpenAPI 3.2), and
this test the JSON inside each event against that schema's ``contentSchema``
(an annotation, which validators do not apply on their own).

Where Volt deliberately answers otherwise than a check expects, the check is
left out for those operations only, and here is why:

- ``not_a_server_error``: a 5xx is always a failure, except Forge's 503 here
  (this cluster runs without Kubernetes, and says so).
- ``positive_data_acceptance``: a request the schema allows can still break a
  rule between fields that JSON Schema here does not state (``top_logprobs``
  without ``logprobs``, ``best_of`` other than ``n``, a ``group_by`` name that
  is not a dimension, a grant type the token endpoint does not serve) or ask
  for what this engine cannot do (token-id embedding inputs): a 400 with
  OpenAI's envelope (OAuth's on ``/oauth/token``) is the right answer, and the
  fuzz tests check those answers' shape.
- ``negative_data_rejection`` on the console's browser pages: without a
  session they redirect to sign-in (302), as a browser expects, whatever else
  is wrong with the request.
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
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
)

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
        "text/event-stream"]["itemSchema"]
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
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case, api: Cluster) -> None:
    path = case.operation.path
    excluded = [not_a_server_error, positive_data_acceptance]
    if path.startswith("/console") or path == "/device":  # the browser pages
        excluded.append(negative_data_rejection)
    response = case.call(base_url=f"http://127.0.0.1:{api.api_port}",
                         headers={"Authorization": f"Bearer {api.api_key}"}, timeout=60)
    case.validate_response(response, excluded_checks=excluded)
    if response.status_code >= 500:
        # This cluster runs without Kubernetes: Forge is off, and says so.
        assert path.startswith("/v1/forge"), (response.text, json.dumps(case.body))
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "forge_disabled", response.text
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        check_stream(path, case.method.lower(), response.text)
