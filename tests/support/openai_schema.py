"""OpenAI's published OpenAPI document as JSON Schema validators.

The pinned copy lives beside the project (``../shared/data/openai-openapi.yaml``;
its README says which commit). Its ``nullable: true`` markers are OpenAPI 3.0
leftovers: read as "or null". Volt's ``volt`` extension field is allowed
because OpenAI's object schemas do not forbid extra properties.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

DOCUMENT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openai-openapi.yaml"


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def components() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with DOCUMENT.open() as handle:
        document = yaml.load(handle, Loader=loader)
    return {"components": _nullable(document["components"])}


def validator(schema_name: str) -> Draft202012Validator:
    return Draft202012Validator({**components(), "$ref": f"#/components/schemas/{schema_name}"})


def problems(schema_name: str, instance: Any) -> list[str]:
    """Every way ``instance`` breaks the schema (empty: it conforms)."""
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator(schema_name).iter_errors(instance)]
