"""The OpenAPI document and its interactive viewer."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .context import current_identity
from .openapi import build_spec

bp = Blueprint("docs", __name__)

# Swagger UI from a public CDN: the page is for people with a browser, the document itself is local.
SWAGGER_UI_VERSION = "5.17.14"
DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} — API docs</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@{v}/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@{v}/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({{url: "openapi.json", dom_id: "#ui"}});</script>
</body></html>"""


@bp.get("/openapi.json")
def openapi_json() -> Response:
    if "openapi_spec" not in current_app.extensions:  # built once, on first request: every route exists then
        identity = current_identity()
        current_app.extensions["openapi_spec"] = build_spec(current_app, identity.app_name, identity.version)
    return jsonify(current_app.extensions["openapi_spec"])


@bp.get("/docs")
def docs_page() -> Response:
    return Response(DOCS_PAGE.format(title=current_identity().app_name, v=SWAGGER_UI_VERSION), mimetype="text/html")
