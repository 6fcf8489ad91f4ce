"""The OpenAPI document and its interactive viewer."""

from __future__ import annotations

import html

from flask import Blueprint, Response, current_app, jsonify

from .context import current_identity
from .openapi import build_spec

bp = Blueprint("docs", __name__)

# Swagger UI from a public CDN: the page is for people with a browser, the document itself is local.
# The browser loads the files only if they are exactly the bytes of this pinned release (subresource
# integrity), so a compromised CDN cannot run its own script on our origin. After changing the version,
# recompute both hashes from the npm package (tests/test_health_and_openapi.py checks them the same way):
#   npm pack swagger-ui-dist@VERSION && tar xzf swagger-ui-dist-VERSION.tgz
#   echo "sha384-$(openssl dgst -sha384 -binary package/swagger-ui-bundle.js | openssl base64 -A)"
SWAGGER_UI_VERSION = "5.17.14"
SWAGGER_UI_CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@{version}/{name}"
SWAGGER_UI_INTEGRITY = {
    "swagger-ui.css": "sha384-wxLW6kwyHktdDGr6Pv1zgm/VGJh99lfUbzSn6HNHBENZlCN7W602k9VkGdxuFvPn",
    "swagger-ui-bundle.js": "sha384-wmyclcVGX/WhUkdkATwhaK1X1JtiNrr2EoYJ+diV3vj4v6OC5yCeSu+yW13SYJep",
}
DOCS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title} — API docs</title>
<link rel="stylesheet" href="{css}" integrity="{css_integrity}" crossorigin="anonymous"></head>
<body><div id="ui"></div>
<script src="{js}" integrity="{js_integrity}" crossorigin="anonymous"></script>
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
    page = DOCS_PAGE.format(
        title=html.escape(current_identity().app_name),
        css=SWAGGER_UI_CDN.format(version=SWAGGER_UI_VERSION, name="swagger-ui.css"),
        css_integrity=SWAGGER_UI_INTEGRITY["swagger-ui.css"],
        js=SWAGGER_UI_CDN.format(version=SWAGGER_UI_VERSION, name="swagger-ui-bundle.js"),
        js_integrity=SWAGGER_UI_INTEGRITY["swagger-ui-bundle.js"],
    )
    return Response(page, mimetype="text/html")
