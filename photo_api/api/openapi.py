"""OpenAPI 3 from the routes themselves: `@doc(...)` on a view, the document built from the URL map.

The same pydantic models validate requests and serialise responses, so the document cannot drift from
what the code does; a route without `@doc` is left out (and a test fails on that).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from pydantic import BaseModel

from ..models import MAX_ID
from .schemas import Problem

F = TypeVar("F", bound=Callable[..., Any])

OPENAPI_VERSION = "3.1.0"
_CONVERTER = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>\w+)>")
_PARAM_TYPES = {
    "int": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    "string": {"type": "string"},
    None: {"type": "string"},
}
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content",
    206: "Partial Content",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
# Every route can answer these; documented once per operation.
_COMMON_ERRORS = (400, 422, 503)
ResponseSpec = type[BaseModel] | list[type[BaseModel]] | dict[str, Any] | None


def doc(
    summary: str,
    *,
    tag: str,
    responses: dict[int, ResponseSpec],
    body: type[BaseModel] | dict[str, Any] | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    description: str | None = None,
) -> Callable[[F], F]:
    """Attach the OpenAPI description of a view: its body, query, responses and error statuses.

    `responses` maps a status to a model, `[Model]` for a JSON array, a raw schema dict with a
    "content" key (e.g. images), or None for an empty body. `body_required=False` documents a
    model body the view also accepts absent.
    """

    def decorate(view: F) -> F:
        meta = dict(getattr(view, "_openapi", {}))
        meta.update(
            summary=summary,
            tag=tag,
            responses=responses,
            body=body,
            body_required=body_required,
            query=query,
            errors=errors,
            description=description,
        )
        view._openapi = meta  # type: ignore[attr-defined]
        return view

    return decorate


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)  # type: ignore[arg-type]
        for name, sub in schema.pop("$defs", {}).items():
            self.schemas.setdefault(name, sub)
        self.schemas.setdefault(model.__name__, schema)
        return {"$ref": f"#/components/schemas/{model.__name__}"}


def _media(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def _response(components: _Components, status: int, spec: ResponseSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"description": _STATUS_TEXT.get(status, str(status))}
    if isinstance(spec, list):
        out["content"] = _media({"type": "array", "items": components.ref(spec[0])})
    elif isinstance(spec, dict):
        out.update(spec)
    elif spec is not None:
        out["content"] = _media(components.ref(spec))
    out.setdefault("headers", {})["X-Request-ID"] = {"$ref": "#/components/headers/X-Request-ID"}
    return out


def _operation(components: _Components, meta: dict[str, Any], params: list[dict[str, Any]]) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": meta["summary"], "tags": [meta["tag"]], "parameters": list(params)}
    if meta.get("description"):
        op["description"] = meta["description"]
    query: type[BaseModel] | None = meta.get("query")
    if query is not None:
        qschema = query.model_json_schema()
        for name, prop in qschema.get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            op["parameters"].append(
                {"name": name, "in": "query", "required": name in qschema.get("required", []), "schema": prop}
            )
    body = meta.get("body")
    if isinstance(body, dict):
        op["requestBody"] = body
    elif body is not None:
        op["requestBody"] = {
            "required": meta.get("body_required", True),
            "content": _media(components.ref(body, mode="validation")),
        }
    responses = {str(code): _response(components, code, spec) for code, spec in meta["responses"].items()}
    errors = set(meta.get("errors", ())) | set(_COMMON_ERRORS)
    if meta.get("auth"):
        op["security"] = [{"bearerAuth": []}]
        errors |= {401, 403}
    problem = components.ref(Problem)
    for code in sorted(errors):
        responses.setdefault(
            str(code),
            {
                "description": _STATUS_TEXT.get(code, str(code)),
                "content": _media(problem, "application/problem+json"),
                "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
            },
        )
    for code in ("429", "503"):
        if code in responses:
            responses[code]["headers"]["Retry-After"] = {"schema": {"type": "integer"}}
    op["responses"] = responses
    return op


def build_spec(app: Flask, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI document of every documented route of `app`."""
    components = _Components()
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions.get(rule.endpoint)
        meta = getattr(view, "_openapi", None)
        if meta is None or (rule.rule.endswith("/") and rule.rule != "/"):
            continue
        params = [
            {
                "name": m["name"],
                "in": "path",
                "required": True,
                "schema": _PARAM_TYPES.get(m["conv"], {"type": "string"}),
            }
            for m in _CONVERTER.finditer(rule.rule)
        ]
        path = _CONVERTER.sub(lambda m: "{" + m["name"] + "}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(components, meta, params)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "headers": {
                "X-Request-ID": {
                    "description": "Request ID, echoed or generated",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                }
            },
        },
    }
