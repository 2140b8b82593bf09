"""JSON Schemas of the HTTP API's request and response bodies, and body validation.

The same dictionaries validate incoming bodies and appear in the OpenAPI document served at
``/api/v1/openapi.json``, so the document cannot drift from what the server accepts. Schemas
check shape and types; the domain modules (:mod:`livecore.accounts`, :mod:`livecore.streams`)
check meaning (a username's alphabet, a birthdate's plausibility).
"""

from __future__ import annotations

from typing import Any, cast

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as _SchemaError

from livecore.accounts import PASSWORD_MAX_CHARS, Role
from livecore.errors import ValidationFailed
from livecore.streams import DESCRIPTION_MAX_CHARS, TITLE_MAX_CHARS, StreamState

Schema = dict[str, Any]


def _object(properties: dict[str, Schema], required: list[str]) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


UUID: Schema = {"type": "string", "format": "uuid"}
_TIME: Schema = {"type": "string", "format": "date-time"}
_ROLES: Schema = {
    "type": "array",
    "items": {"type": "string", "enum": [r.value for r in Role]},
    "uniqueItems": True,
}

REGISTER: Schema = _object(
    {
        "username": {"type": "string", "maxLength": 64, "examples": ["ada"]},
        "password": {"type": "string", "maxLength": PASSWORD_MAX_CHARS},
        "birthdate": {"type": "string", "format": "date", "examples": ["1990-04-01"]},
    },
    ["username", "password", "birthdate"],
)
LOGIN: Schema = _object(
    {
        "username": {"type": "string", "maxLength": 64},
        "password": {"type": "string", "maxLength": PASSWORD_MAX_CHARS},
    },
    ["username", "password"],
)
SET_ROLES: Schema = _object({"roles": _ROLES}, ["roles"])
STREAM_CREATE: Schema = _object(
    {
        "title": {"type": "string", "maxLength": TITLE_MAX_CHARS * 2},
        "description": {"type": ["string", "null"], "maxLength": DESCRIPTION_MAX_CHARS * 2},
    },
    ["title"],
)
STREAM_UPDATE: Schema = {
    **_object(
        {
            "title": {"type": "string", "maxLength": TITLE_MAX_CHARS * 2},
            "description": {"type": ["string", "null"], "maxLength": DESCRIPTION_MAX_CHARS * 2},
        },
        [],
    ),
    "minProperties": 1,
}

USER: Schema = {
    "type": "object",
    "properties": {
        "id": UUID,
        "username": {"type": "string"},
        "roles": _ROLES,
        "is_adult": {"type": "boolean"},
        "created_at": _TIME,
        "birthdate": {"type": "string", "format": "date"},
    },
    "required": ["id", "username", "roles", "is_adult", "created_at"],
}
TOKEN: Schema = {
    "type": "object",
    "properties": {
        "id": UUID,
        "created_at": _TIME,
        "expires_at": _TIME,
        "is_current": {"type": "boolean"},
    },
    "required": ["id", "created_at", "expires_at"],
}
LOGIN_RESULT: Schema = {
    "type": "object",
    "properties": {
        "token": {"type": "string", "description": "Send as `Authorization: Bearer <token>`."},
        "token_id": UUID,
        "expires_at": _TIME,
        "user": USER,
    },
    "required": ["token", "token_id", "expires_at", "user"],
}
STREAM: Schema = {
    "type": "object",
    "properties": {
        "id": UUID,
        "creator_id": UUID,
        "creator_username": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in StreamState]},
        "created_at": _TIME,
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "whip_url": {"type": "string"},
        "whep_url": {"type": "string"},
        "hls_url": {"type": "string"},
        "stream_key": {
            "type": "string",
            "description": "Only in answers to the stream's owner. Use as the WHIP Bearer token.",
        },
    },
    "required": [
        "id",
        "creator_id",
        "creator_username",
        "title",
        "description",
        "state",
        "created_at",
        "whep_url",
        "hls_url",
    ],
}
STREAM_LIST: Schema = {
    "type": "object",
    "properties": {
        "streams": {"type": "array", "items": STREAM},
        "next_cursor": {"type": ["string", "null"]},
    },
    "required": ["streams", "next_cursor"],
}
USER_LIST: Schema = {
    "type": "object",
    "properties": {
        "users": {"type": "array", "items": USER},
        "next_cursor": {"type": ["string", "null"]},
    },
    "required": ["users", "next_cursor"],
}
TOKEN_LIST: Schema = {
    "type": "object",
    "properties": {"tokens": {"type": "array", "items": TOKEN}},
    "required": ["tokens"],
}
HEALTH: Schema = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "unavailable"]},
        "postgres": {"type": "string"},
        "redis": {"type": "string"},
    },
    "required": ["status", "postgres", "redis"],
}
ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "examples": ["validation_failed"]},
                "message": {"type": "string"},
                "field": {"type": "string"},
                "retry_after_s": {"type": "integer"},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}


def validate(schema: Schema, body: Any) -> dict[str, Any]:
    """Check ``body`` against ``schema``; raise :class:`ValidationFailed` naming the field."""
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(body), key=_error_order)
    if not errors:
        assert isinstance(body, dict)
        return body
    raise _to_validation_failed(errors[0])


def _error_order(error: _SchemaError) -> tuple[int, int, str]:
    # Report the body not being an object first, then missing fields, then the first field.
    rank = {"type": 1, "required": 0, "additionalProperties": 2}.get(str(error.validator), 3)
    return (len(error.absolute_path), rank, ".".join(str(p) for p in error.absolute_path))


def _to_validation_failed(error: _SchemaError) -> ValidationFailed:
    path = ".".join(str(part) for part in error.absolute_path)
    instance = error.instance if isinstance(error.instance, dict) else {}
    if not path and error.validator == "type":
        return ValidationFailed("The request body must be a JSON object.", code="invalid_body")
    if error.validator == "required":
        required = cast(list[str], error.validator_value)
        name = next(name for name in required if name not in instance)
        return ValidationFailed(
            f"The field {name!r} is required.", code="missing_field", field=name
        )
    if error.validator == "additionalProperties":
        allowed = set(cast(Schema, error.schema).get("properties", {}))
        unknown = sorted(set(instance) - allowed)
        name = unknown[0] if unknown else path
        return ValidationFailed(
            f"The field {name!r} is not accepted here.", code="unknown_field", field=name
        )
    if error.validator == "minProperties":
        return ValidationFailed("The request body names no field to change.", code="invalid_body")
    field = path or "body"
    expected = {
        "type": f"must be of type {error.validator_value}",
        "maxLength": f"must be at most {error.validator_value} characters",
        "enum": f"must be one of {error.validator_value}",
        "uniqueItems": "must not repeat items",
    }.get(str(error.validator), "is not valid")
    return ValidationFailed(f"The field {field!r} {expected}.", code="invalid_field", field=field)
