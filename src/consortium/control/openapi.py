"""The API's OpenAPI document as the API behaves: its bearer token, its JSON errors.

FastAPI documents what it sees in the routes: a 422 in its own shape
(``{"detail": [...]}``), no authentication, no 401/403/404. This module corrects
the generated document once, so clients and schemathesis
(``tests/control/test_openapi_fuzz.py``) read the truth: every operation but
``GET /api/v1/health`` needs ``Authorization: Bearer``, and every error is
``{"error": {"status", "code", "message", "field"?}}``
(:class:`~consortium.control.guard.ApiError`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

#: operations anyone may call
OPEN_PATHS = frozenset({"/api/v1/health"})
#: the errors every authenticated operation may answer with
COMMON_ERRORS = {
    "401": "No token, or a malformed, forged, expired or revoked one.",
    "403": "The server's policy does not grant the action to the token's role.",
    "404": "No such run, app or model (`field` names which).",
    "422": "A bad field (`field` names it).",
}
#: errors of one operation only: (method, path) -> status -> why
EXTRA_ERRORS = {
    ("post", "/api/v1/apps"): {"413": "The bundle is over the server's limit."},
    ("get", "/api/v1/runs/{run_id}/model"): {
        "501": "format=safetensors without the safetensors package."
    },
}
#: answers that are not JSON: (method, path) -> media type of the 200 answer
MEDIA = {
    ("get", "/api/v1/runs/{run_id}/model"): "application/octet-stream",
    ("get", "/api/v1/runs/{run_id}/events"): "text/event-stream",
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "properties": {
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}


def document_errors(api: FastAPI) -> None:
    """Make ``api.openapi()`` (``/openapi.json``) say how the API authenticates and fails."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
            )
            api.openapi_schema = corrected(schema)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def corrected(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the bearer scheme, the JSON error body, and non-JSON answers."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ApiError"] = ERROR_SCHEMA
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `consortium token create`.",
    }
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            media = MEDIA.get((method, path))
            if media is not None:
                for answer in responses.values():
                    if "content" in answer:
                        answer["content"] = {media: {"schema": {"type": "string"}}}
            if path in OPEN_PATHS or not path.startswith("/api/"):
                continue
            operation["security"] = [{"bearer": []}]
            errors = {**COMMON_ERRORS, **EXTRA_ERRORS.get((method, path), {})}
            for status, why in errors.items():
                responses[status] = {"description": why, "content": error}
    components["schemas"].pop("HTTPValidationError", None)
    components["schemas"].pop("ValidationError", None)
    return schema
