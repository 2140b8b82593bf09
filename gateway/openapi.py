"""The OpenAPI 3.1 document, rendered from the route table.

Request and response schemas are the ones :mod:`livecore.schemas` validates with; access rules
become ``security`` requirements, so the document says exactly what the server enforces.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from gateway.api import Route
from livecore import __version__, schemas
from livecore.accounts import GRANTS, Permission, sorted_roles

_PATH_PARAM = re.compile(r"{([a-z_]+)}")
_ERROR_TEXT = {
    400: "Malformed request (bad JSON, bad query parameter).",
    401: "Missing, unknown, expired or revoked bearer token.",
    402: "Not enough coins; nothing was spent.",
    403: "The caller's roles or ownership do not allow this.",
    404: "Unknown id.",
    409: "Conflicts with the current state (duplicate, or a transition that is not allowed).",
    413: "Request body too large.",
    415: "Request body is not application/json.",
    422: "Well-formed JSON that breaks the schema or a rule; `field` names the culprit.",
    429: "Throttled; `retry_after_s` and the Retry-After header say how long to wait.",
    503: "PostgreSQL or Redis is unreachable; retry later.",
}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {},
    }
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": schemas.UUID if name.endswith("_id") else {"type": "string"}}
        for name in _PATH_PARAM.findall(route.path)
    ]
    params += [
        {"name": q.name, "in": "query", "required": False, "description": q.description,
         "schema": q.schema}
        for q in route.query
    ]
    if params:
        op["parameters"] = params
    if route.access == "public":
        op["security"] = []
    elif route.access == "optional":
        op["security"] = [{}, {"bearer": []}]
    else:
        op["security"] = [{"bearer": []}]
        if isinstance(route.access, Permission):
            roles = ", ".join(sorted_roles(GRANTS[route.access]))
            op["description"] = f"Requires one of the roles: {roles}."
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": route.body}},
        }
    ok: dict[str, Any] = {"description": "Success."}
    if route.response is not None:
        media = "text/plain" if route.response.get("type") == "string" else "application/json"
        ok["content"] = {media: {"schema": route.response}}
    op["responses"][str(route.status)] = ok
    statuses = set(route.errors)
    if route.body is not None:
        statuses |= {400, 413, 415, 422}
    if route.access not in ("public",):
        statuses.add(401)
    statuses.add(503)
    for status in sorted(statuses):
        op["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error."),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return op


def build_document(routes: Iterable[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Livecore HTTP API",
            "version": __version__,
            "description": "Accounts, streams and operations. Every error answers "
            '`{"error": {"code": "...", "message": "..."}}`; see docs/api.md.',
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "A login token."}
            },
            "schemas": {"Error": schemas.ERROR},
        },
    }
