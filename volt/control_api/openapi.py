"""The OpenAPI 3.1 document, generated from the msgspec types that validate requests.

msgspec emits JSON Schema 2020-12, which is OpenAPI 3.1's schema dialect, so
the components below are exactly what the API enforces. ``OPERATIONS`` lists
every route; a test checks that it matches the routes the app serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from volt.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from volt.protocol.common import ErrorResponse, Model, ModelList
from volt.protocol.completions import Completion, CompletionRequest
from volt.protocol.embeddings import EmbeddingList, EmbeddingRequest
from volt.protocol.usage import UsageReport

_ERROR_TEXT = {
    400: "Invalid request (bad JSON or field)",
    401: "Missing or invalid API key",
    403: "Outside the tenant's catalog (a metro or tier it may not use)",
    404: "Unknown model or route",
    413: "Request body too large",
    429: "Too many requests waiting; see Retry-After and x-ratelimit-* headers",
    501: "Not available yet",
    503: "No healthy pod can serve the request now (see Retry-After)",
    504: "The request ran past its deadline",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    response: Any = None
    request: Any = None
    stream: Any = None
    errors: tuple[int, ...] = ()
    public: bool = False
    content_type: str = "application/json"
    query: tuple[tuple[str, str], ...] = ()
    """(name, description) of string query parameters."""


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/chat/completions", "createChatCompletion", "Create a chat completion",
        request=ChatCompletionRequest, response=ChatCompletion, stream=ChatCompletionChunk,
        errors=(400, 401, 403, 404, 413, 429, 503, 504),
    ),
    Operation(
        "post", "/v1/completions", "createCompletion", "Create a text completion",
        request=CompletionRequest, response=Completion, stream=Completion,
        errors=(400, 401, 403, 404, 413, 429, 503, 504),
    ),
    Operation(
        "post", "/v1/embeddings", "createEmbedding", "Create embeddings",
        request=EmbeddingRequest, response=EmbeddingList,
        errors=(400, 401, 403, 404, 413, 429, 503, 504),
    ),
    Operation("get", "/v1/models", "listModels", "List available models",
              response=ModelList, errors=(401,)),
    Operation("get", "/v1/models/{model_id}", "retrieveModel", "Get a model",
              response=Model, errors=(401, 404)),
    Operation(
        "get", "/v1/usage", "getUsage", "Token usage for the tenant", response=UsageReport,
        errors=(400, 401),
        query=(
            ("start", "Unix seconds or a UTC date (YYYY-MM-DD); default: 30 days before end"),
            ("end", "Unix seconds or a UTC date, exclusive; default: now"),
            ("group_by", "Comma-separated: model, day, metro, tier, key"),
        ),
    ),
    *(
        Operation(method, path, f"{verb}FineTuningJob{suffix}", f"{summary} (not available yet)",
                  errors=(401, 501))
        for base, suffix in (("/v1/fine-tuning/jobs", ""), ("/v1/fine_tuning/jobs", "OpenAI"))
        for method, path, verb, summary in (
            ("post", base, "create", "Submit a LoRA fine-tune job"),
            ("get", base, "list", "List fine-tune jobs"),
            ("get", base + "/{job_id}", "retrieve", "Get a fine-tune job"),
        )
    ),
    Operation("get", "/healthz", "healthz", "Liveness", public=True, content_type="text/plain"),
    Operation("get", "/readyz", "readyz", "Readiness: connected and routing", public=True,
              errors=(503,), content_type="text/plain"),
    Operation("get", "/openapi.yaml", "openapi", "This document", public=True,
              content_type="application/yaml"),
    Operation("get", "/metrics", "metrics", "Prometheus metrics", public=True,
              content_type="text/plain"),
)


def build_document(version: str) -> dict[str, Any]:
    types = [ErrorResponse] + [
        t for op in OPERATIONS for t in (op.request, op.response, op.stream) if t is not None
    ]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )

    def ref(t: Any) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{t.__name__}"}

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            ok["content"] = {"application/json": {"schema": ref(op.response)}}
            if op.stream is not None:
                ok["content"]["text/event-stream"] = {
                    "schema": {
                        "type": "string",
                        "description": (
                            "With `stream: true`: server-sent events, each "
                            f"`data: <{op.stream.__name__}>`, ending with `data: [DONE]`."
                        ),
                    },
                }
        else:
            ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {"200": ok}
        for status in op.errors:
            responses[str(status)] = {
                "description": _ERROR_TEXT[status],
                "content": {"application/json": {"schema": ref(ErrorResponse)}},
            }
        operation: dict[str, Any] = {
            "operationId": op.operation_id, "summary": op.summary, "responses": responses,
        }
        if op.public:
            operation["security"] = []
        if op.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(op.request)}},
            }
        parameters: list[dict[str, Any]] = []
        for name in ("model_id", "job_id"):
            if "{" + name + "}" in op.path:
                parameters.append({
                    "name": name, "in": "path", "required": True, "schema": {"type": "string"},
                })
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text,
             "schema": {"type": "string"}}
            for name, text in op.query
        ]
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Volt Control Plane API",
            "version": version,
            "description": "Spark (OpenAI-compatible tokens), Forge and Vault.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "API key: volt_sk_live_..."},
            },
        },
    }


def render_yaml(version: str) -> str:
    text: str = yaml.safe_dump(build_document(version), sort_keys=False, allow_unicode=True)
    return text
