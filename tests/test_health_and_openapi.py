"""Health probes (body shape, draining) and the OpenAPI document: valid, complete, and true to real answers.

The OpenAPI document is checked against the OpenAPI 3.1 meta-schema that schemathesis ships (a test
dependency), through its public `schemathesis.openapi.from_dict(...).validate()`; response bodies are
validated against the documented schemas with `jsonschema_rs` (installed with schemathesis). Structural
checks (every `$ref` resolves, every route documented) run in any case.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from photo_api import create_app, lifecycle, migrate
from photo_api.api import docs
from photo_api.api.context import collaborators_of
from photo_api.config import Settings, load_settings
from tests.harness.ci import unavailable
from tests.harness.env import production_env
from tests.harness.users import Users
from tests.http_checks import assert_problem

HEALTH_KEYS = {"status", "timestamp", "instance", "version", "checks"}
CIRCUIT_STATES = {"closed", "open", "half_open"}
INFORMATIONAL_STATUSES = {"healthy", "unknown", "unhealthy", "disabled"}
# Served by the docs blueprint itself, not part of the API they describe.
UNDOCUMENTED = {"/openapi.json", "/docs", "/static/<path:filename>"}
IGNORED_METHODS = {"HEAD", "OPTIONS"}
NPM_TIMEOUT_S = 120


@pytest.fixture
def draining() -> Iterator[None]:
    """The instance has been asked to stop (what the gunicorn SIGTERM hook does), reset afterwards."""
    lifecycle.set_draining(True)
    try:
        yield
    finally:
        lifecycle.set_draining(False)


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    document: dict[str, Any] = r.get_json()
    return document


def parse_timestamp(value: str) -> datetime:
    """A contract timestamp: ISO-8601 UTC with a Z suffix."""
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value[:-1] + "+00:00")


# ---------------------------------------------------------------- health


def assert_health_body(body: dict[str, Any], settings: Settings, status: str) -> None:
    """The /health body has exactly the shape docs/api.md gives."""
    assert set(body) == HEALTH_KEYS
    assert body["status"] == status
    assert abs(parse_timestamp(body["timestamp"]).timestamp() - time.time()) < 60
    assert body["instance"] == settings.instance_id
    assert body["version"] == settings.app_version
    checks = body["checks"]
    # A draining instance that has never probed has no schema result yet.
    required = {"database", "object_storage", "cdn", "jobs"} | (set() if status == "draining" else {"schema"})
    assert required <= set(checks) <= required | {"schema"}
    database = checks["database"]
    if status == "draining":
        # A draining instance answers at once with the last database result it has, if any.
        assert set(database) <= {"status", "latency_ms"}
        assert database["status"] in {"healthy", "unhealthy", "timeout", "unknown"}
    else:
        assert set(database) == {"status", "latency_ms"}
        assert database["status"] == "healthy"
        assert isinstance(database["latency_ms"], int | float)
        assert 0 <= database["latency_ms"] < settings.health_check_timeout * 1000
        head = migrate.head()
        assert checks["schema"] == {"status": "healthy", "current": head, "expected": head}
    for name in ("object_storage", "cdn"):
        assert set(checks[name]) >= {"status", "circuit"}, checks[name]
        assert checks[name]["status"] in INFORMATIONAL_STATUSES
        assert checks[name]["circuit"] in CIRCUIT_STATES
    # The job queue: informational too; without REDIS_URL the jobs run in the app process.
    assert checks["jobs"]["status"] in INFORMATIONAL_STATUSES, checks["jobs"]
    assert set(checks["jobs"]) <= {"status", "latency_ms", "queue_depth"}


@pytest.mark.parametrize("path", ["/health", "/health/readiness"])
def test_health_is_200_with_the_documented_body(client: FlaskClient, settings: Settings, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert r.headers["Cache-Control"] == "no-store"  # a cached probe answer would hide a failure
    assert_health_body(r.get_json(), settings, "healthy")


def test_liveness_is_200(client: FlaskClient, settings: Settings) -> None:
    r = client.get("/health/liveness")
    assert r.status_code == 200
    body = r.get_json()
    assert body["status"] == "alive"
    assert body["instance"] == settings.instance_id
    assert body["version"] == settings.app_version
    parse_timestamp(body["timestamp"])


@pytest.mark.usefixtures("draining")
def test_draining_fails_readiness_but_not_liveness(client: FlaskClient, settings: Settings) -> None:
    for path in ("/health", "/health/readiness"):
        r = client.get(path)
        assert r.status_code == 503, path
        assert_health_body(r.get_json(), settings, "draining")  # the DB is still fine; draining decides
    r = client.get("/health/liveness")
    assert r.status_code == 200
    assert r.get_json()["status"] == "alive"


@pytest.mark.usefixtures("draining")
def test_draining_still_serves_requests(client: FlaskClient, users: Users) -> None:
    # During the drain delay the LB is still sending traffic: it must be served, not refused.
    user = users.create()
    assert client.get("/auth/me", headers=user["headers"]).status_code == 200


def test_draining_ends(client: FlaskClient) -> None:
    lifecycle.set_draining(True)
    try:
        assert client.get("/health").status_code == 503
    finally:
        lifecycle.set_draining(False)
    assert client.get("/health").status_code == 200


# ---------------------------------------------------------------- OpenAPI document


def test_openapi_document_is_valid_openapi_3(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    # The OpenAPI 3.x meta-schema (schemathesis ships it; raises on the first violation).
    schemathesis.openapi.from_dict(spec).validate()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def resolve(spec: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer such as #/components/schemas/UserOut."""
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        resolve(spec, ref)


def openapi_path(rule: str) -> str:
    """/photos/<int:photo_id> → /photos/{photo_id}."""
    out = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].split(":")[-1] + "}"
        out.append(part)
    return "/".join(out)


def test_every_route_is_documented_with_its_methods(app: Flask, spec: dict[str, Any]) -> None:
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    documented = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED or rule.endpoint == "static":
            continue
        if rule.rule.endswith("/") and rule.rule != "/" and rule.rule.rstrip("/") in rules:
            continue  # the trailing-slash twin of a documented path
        path = openapi_path(rule.rule)
        assert path in spec["paths"], f"{rule.rule} ({rule.endpoint}) is not in /openapi.json"
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            assert method.lower() in spec["paths"][path], f"{method} {rule.rule} is not documented"
            documented += 1
    assert documented >= 6  # health x3, register, login, me at least
    # ...and nothing is documented that does not exist.
    served = {openapi_path(r.rule) for r in app.url_map.iter_rules()}
    assert set(spec["paths"]) <= served


def test_operations_document_their_errors_and_auth(spec: dict[str, Any]) -> None:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op.get("summary"), (method, path)
            assert op["responses"], (method, path)
            if op.get("security"):
                assert "401" in op["responses"], (method, path)
            for status, response in op["responses"].items():
                # Errors are problems; the health probes answer 503 with their own body, on purpose.
                if status.startswith(("4", "5")) and not path.startswith("/health"):
                    assert "application/problem+json" in response.get("content", {}), (method, path, status)
    assert spec["paths"]["/auth/me"]["get"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/auth/login"]["post"]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    register = spec["paths"]["/auth/register"]["post"]
    body_schema = resolve(spec, register["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    assert set(body_schema["required"]) == {"email", "username", "password"}


# ---------------------------------------------------------------- real answers match the document


def assert_documented(spec: dict[str, Any], path: str, method: str, response: TestResponse) -> None:
    """`response` has a documented status and content type, and its body validates against the schema."""
    op = spec["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in op["responses"], f"{method} {path} answered {status}, which is not documented"
    documented = op["responses"][status]
    content = documented.get("content", {})
    if not content:
        assert not response.get_data(), f"{method} {path} {status} documents no body"
        return
    assert response.mimetype in content, (response.mimetype, list(content))
    schema = {**content[response.mimetype]["schema"], "components": spec["components"]}
    validator = jsonschema_rs.Draft202012Validator(schema)
    errors = [str(e) for e in validator.iter_errors(response.get_json(force=True))]
    assert not errors, (method, path, status, errors)


def test_auth_answers_match_their_schemas(client: FlaskClient, spec: dict[str, Any]) -> None:
    body = {"email": "ann@example.com", "username": "ann", "password": "correct horse battery"}
    calls: list[tuple[str, str, TestResponse]] = [
        ("/auth/register", "POST", client.post("/auth/register", json=body)),
        ("/auth/register", "POST", client.post("/auth/register", json=body)),  # 409
        ("/auth/register", "POST", client.post("/auth/register", json={"email": 1})),  # 422
        ("/auth/register", "POST", client.post("/auth/register", data="{", content_type="application/json")),  # 400
        ("/auth/login", "POST", client.post("/auth/login", json={"email": body["email"], "password": "wrong-pw"})),
    ]
    login = client.post("/auth/login", json={"email": body["email"], "password": body["password"]})
    calls.append(("/auth/login", "POST", login))
    token = login.get_json()["access_token"]
    calls.append(("/auth/me", "GET", client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})))
    calls.append(("/auth/me", "GET", client.get("/auth/me")))  # 401
    assert [status for *_, r in calls for status in [r.status_code]] == [201, 409, 422, 400, 401, 200, 200, 401]
    for path, method, response in calls:
        assert_documented(spec, path, method, response)


def test_health_answers_match_their_schemas(client: FlaskClient, spec: dict[str, Any]) -> None:
    for path in ("/health", "/health/readiness", "/health/liveness"):
        assert_documented(spec, path, "GET", client.get(path))
    lifecycle.set_draining(True)
    try:
        for path in ("/health", "/health/readiness"):
            r = client.get(path)
            assert r.status_code == 503
            assert_documented(spec, path, "GET", r)
    finally:
        lifecycle.set_draining(False)


def test_the_schema_check_can_fail(spec: dict[str, Any]) -> None:
    # The validator above is not a rubber stamp: a body missing a required field is refused.
    schema = {**spec["paths"]["/auth/me"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]}
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})
    assert not validator.is_valid({"id": 1, "email": "a@example.com"})
    assert validator.is_valid(
        {"id": 1, "email": "a@example.com", "username": "abc", "is_active": True, "created_at": "2024-01-01T00:00:00Z"}
    )


# ---------------------------------------------------------------- docs page and the switch


def test_docs_page_is_html(client: FlaskClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "<html" in page.lower()
    assert "openapi.json" in page


class _Assets(HTMLParser):
    """The stylesheets and scripts an HTML page loads, with their attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if (tag == "link" and found.get("rel") == "stylesheet") or (tag == "script" and "src" in found):
            self.assets.append({"tag": tag, **found})


def test_docs_page_loads_only_the_pinned_swagger_ui_with_integrity(client: FlaskClient) -> None:
    parser = _Assets()
    parser.feed(client.get("/docs").get_data(as_text=True))
    urls = {asset.get("href") or asset.get("src"): asset for asset in parser.assets}
    pinned = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{docs.SWAGGER_UI_VERSION}/"
    assert set(urls) == {pinned + name for name in docs.SWAGGER_UI_INTEGRITY}
    for url, asset in urls.items():
        name = url.rsplit("/", 1)[1]
        assert asset["integrity"] == docs.SWAGGER_UI_INTEGRITY[name], url
        assert str(asset["integrity"]).startswith("sha384-")
        assert asset["crossorigin"] == "anonymous", url


@pytest.mark.slow
def test_swagger_ui_integrity_hashes_match_the_npm_package(tmp_path: Path) -> None:
    # The constants are what the npm registry serves for the pinned version (the CDN serves the same files).
    npm = shutil.which("npm")
    if npm is None:
        unavailable("npm is not installed (Debian: apt-get install -y npm)")
    package = f"swagger-ui-dist@{docs.SWAGGER_UI_VERSION}"
    try:
        packed = subprocess.run(
            [npm, "pack", "--silent", package], cwd=tmp_path, capture_output=True, text=True, timeout=NPM_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        unavailable(f"npm pack {package}: the npm registry did not answer in {NPM_TIMEOUT_S}s")
    if packed.returncode != 0:
        unavailable(f"npm pack {package} failed (is the npm registry reachable?): {packed.stderr[-500:]}")
    with tarfile.open(tmp_path / packed.stdout.strip().splitlines()[-1]) as archive:
        for name, expected in docs.SWAGGER_UI_INTEGRITY.items():
            member = archive.extractfile(f"package/{name}")
            assert member is not None, name
            digest = base64.b64encode(hashlib.sha384(member.read()).digest()).decode()
            assert expected == f"sha384-{digest}", name


def test_docs_are_off_by_default_in_production(postgresql_database_url: str, tmp_path: Path) -> None:
    production = production_env(postgresql_database_url, tmp_path / "storage")
    settings = load_settings(environ=production)
    assert settings.enable_docs is False
    app = create_app(settings)
    try:
        client = app.test_client()
        for path in ("/openapi.json", "/docs"):
            assert_problem(client.get(path), 404)
        assert client.get("/health/liveness").status_code == 200
    finally:
        collaborators_of(app).db.dispose()
    # Asked for, they are there; in development they are on unless switched off.
    assert load_settings(environ={**production, "ENABLE_DOCS": "true"}).enable_docs is True
    assert load_settings(environ={}).enable_docs is True
    assert load_settings(environ={"ENABLE_DOCS": "false"}).enable_docs is False


def test_docs_can_be_disabled(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(enable_docs=False))
    try:
        client = app.test_client()
        for path in ("/openapi.json", "/docs"):
            assert_problem(client.get(path), 404)
        assert client.get("/health/liveness").status_code == 200
    finally:
        collaborators_of(app).db.dispose()
