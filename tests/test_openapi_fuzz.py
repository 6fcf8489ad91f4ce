"""A schemathesis pass over /openapi.json: no 5xx, and every answer is one the document describes.

The app is driven in-process through WSGI (`schemathesis.openapi.from_wsgi`) on each database backend,
by schemathesis's own engine (what `st run` runs): the coverage phase (boundary values, missing and
wrong-typed fields, methods a path does not have) and then the fuzzing phase, positive and negative
data, for every documented operation. The engine rather than `schemathesis.pytest.from_fixture`,
whose pytest plugin does not run under pytest 9.2 (it sets `request.node._nodeid`, which is gone).

Checks, and why the others are left out:

- `not_a_server_error`, `status_code_conformance`, `content_type_conformance`,
  `response_schema_conformance`, `response_headers_conformance` (X-Request-ID on every answer,
  Retry-After on 503), `unsupported_method` and `allow_header_conformance` (405 with Allow): the
  contract itself.
- `positive_data_acceptance` is out: "schema-valid" is not "acceptable" here. A cover photo must be in
  the album, ids must be the caller's (404), and JSON numbers such as 2.0 are JSON-Schema integers
  that the API refuses (pydantic strict mode) with a 422 naming the field.
- `negative_data_rejection` is out: the API is lenient where the service it replaces was, and that
  is not a defect: query integers are parsed laxly (`skip=+0.0` is 0) and media types match
  case-insensitively. Accepting bad input and then failing would still be caught, by
  `not_a_server_error`. (Its one real finding, a share-link body documented as required, is fixed.)
- `ignored_auth` errors out under the WSGI transport of this schemathesis version (it passes
  `max_redirects` to Werkzeug); `test_every_secured_operation_needs_a_valid_token` below checks the same.
- `missing_required_header`: no operation documents a required header (auth is a security scheme).
- `use_after_free`, `ensure_resource_availability`, `object_level_authorization`: need the stateful
  phase (OpenAPI links) or a second identity; ownership is covered by the HTTP suites.
- `max_response_time`: timing on a shared CI machine says nothing about the contract.

Bodies: the multipart upload needs no special handling. Schemathesis encodes the `file` part
(`format: binary`) as a file and draws it from real small images (PNG, JPEG, GIF, WebP), other files
(PDF, ZIP) and arbitrary bytes, so 201, 415 and 422 are all reached. Image responses (`image/*`,
`format: binary`) have their status, Content-Type and headers checked; their bytes have no JSON
schema to validate (the byte-exact tests are in test_image_delivery.py). Range, If-None-Match and
If-Range are not documented parameters, so the fuzzer never sends them;
`test_image_range_and_conditional_headers` does. The user owns a photo, an album and a share link
before the run (ids 1, which the generators favour), and `{token}` is that link's token, so the
public routes answer 200 as well as 404.

The run is bounded (the coverage phase is a finite list of cases; fuzzing stops at MAX_EXAMPLES per
operation) and repeatable: a fixed seed, derandomized Hypothesis and no example database, on tables
emptied before each test.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from flask import Flask, Response, jsonify
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events, from_schema
from schemathesis.schemas import BaseSchema

from photo_api.images import ALLOWED_IMAGE_TYPES
from tests.harness.users import Users
from tests.images import png, upload
from tests.test_media_pipeline import settle

FUZZ_SEED = 20240611
# Fuzzing cases per operation: ~1,300 requests and 9-17 s per backend in all; raise it locally to dig deeper.
MAX_EXAMPLES = 25
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
)
# Answers the run must have seen at least once: proof that it got past auth and reached real data,
# rather than passing on 401s and 404s alone.
MUST_REACH = {
    ("POST /photos", 201),
    ("GET /photos", 200),
    ("GET /photos/{photo_id}", 200),
    ("GET /photos/{photo_id}/image", 200),
    ("PATCH /photos/{photo_id}", 200),
    ("POST /photos/presigned-url", 201),
    ("POST /albums", 201),
    ("GET /albums/{album_id}", 200),
    ("POST /albums/{album_id}/share", 201),
    ("GET /share/{token}", 200),
    ("GET /share/{token}/photos/{photo_id}/image", 200),
}
RANGE_EXAMPLES = 100
PUBLIC_OPERATIONS = {
    "GET /health",
    "GET /health/liveness",
    "GET /health/readiness",
    "POST /auth/register",
    "POST /auth/login",
    "GET /share/{token}",
    "GET /share/{token}/photos/{photo_id}/image",
    # The renditions of a shared photo: the share token is the credential, as for its image.
    "GET /share/{token}/photos/{photo_id}/thumbnail",
    "GET /share/{token}/photos/{photo_id}/preview",
    "PUT /uploads/{key}",  # the signed URL is the credential
}


@dataclass
class Seeded:
    """What the fuzzed user owns before the run: ids small enough for the generators to hit."""

    headers: dict[str, str]
    token: str
    photo_id: int
    album_id: int
    share_token: str


@dataclass
class FuzzReport:
    """What one engine run found: every check failure and engine error, and the statuses it saw."""

    problems: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    cases: int = 0


@pytest.fixture
def seeded(client: FlaskClient, users: Users) -> Seeded:
    owner = users.create()
    headers = owner["headers"]
    r = upload(client, headers, png(), "seed.png")
    assert r.status_code == 201, r.get_json()
    photo_id = r.get_json()["id"]
    settle(client.application)  # a shared image is served from the copy the background job makes
    r = client.post("/albums", headers=headers, json={"name": "seed"})
    assert r.status_code == 201, r.get_json()
    album_id = r.get_json()["id"]
    r = client.post(f"/albums/{album_id}/photos", headers=headers, json={"photo_ids": [photo_id]})
    assert r.status_code == 200, r.get_json()
    r = client.post(f"/albums/{album_id}/share", headers=headers, json={})
    assert r.status_code == 201, r.get_json()
    return Seeded(headers, owner["token"], photo_id, album_id, r.get_json()["token"])


def fuzz_config(
    *, bearer: str | None = None, parameters: dict[str, Any] | None = None, max_examples: int = MAX_EXAMPLES
) -> SchemathesisConfig:
    """The run's configuration: bounded, seeded, our checks only, the stateful phase off."""
    checks: dict[str, Any] = {"enabled": False} | {name: {"enabled": True} for name in CHECKS}
    data: dict[str, Any] = {
        "seed": FUZZ_SEED,
        "generation": {"mode": "all", "max-examples": max_examples, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "checks": checks,
    }
    if bearer:
        data["auth"] = {"openapi": {"bearerAuth": {"bearer": bearer}}}
    if parameters:
        data["parameters"] = parameters
    return SchemathesisConfig.from_dict(data)


def run_schemathesis(schema: BaseSchema) -> FuzzReport:
    """Run every phase of the schemathesis engine over `schema`; collect failures, errors and statuses."""
    report = FuzzReport()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            report.cases += len(recorder.cases)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    report.statuses[recorder.label][interaction.response.status_code] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure, sample = check.failure_info.failure, check.failure_info.code_sample
                        report.problems.append(
                            f"{recorder.label} [{event.phase.value}] {check.name}: {failure.title}\n"
                            f"{failure.message}\n{sample}"
                        )
        elif isinstance(event, events.NonFatalError):
            report.problems.append(f"{event.label}: {event.info.title}: {event.info}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return report


def test_no_server_error_and_every_answer_is_documented(app: Flask, seeded: Seeded) -> None:
    config = fuzz_config(bearer=seeded.token, parameters={"token": seeded.share_token})
    report = run_schemathesis(schemathesis.openapi.from_wsgi("/openapi.json", app, config=config))
    assert not report.problems, f"{len(report.problems)} problem(s):\n\n" + "\n\n".join(report.problems)
    unreached = {(op, status) for op, status in MUST_REACH if not report.statuses[op][status]}
    assert not unreached, f"the run never saw these answers: {sorted(unreached)}"
    assert report.cases > 1000  # every operation, both phases


def test_the_run_reports_what_breaks_the_contract() -> None:
    # The harness is no rubber stamp: a 500 and a body that contradicts its schema are both reported.
    broken = Flask("broken")
    spec = {
        "openapi": "3.1.0",
        "info": {"title": "broken", "version": "1"},
        "paths": {
            "/thing": {
                "get": {
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["id"],
                                        "properties": {"id": {"type": "integer"}},
                                    }
                                }
                            },
                        }
                    }
                }
            },
            "/crash": {"get": {"responses": {"200": {"description": "OK"}}}},
        },
    }
    broken.add_url_rule("/openapi.json", "spec", lambda: jsonify(spec))
    broken.add_url_rule("/thing", "thing", lambda: jsonify({"id": "one"}))
    broken.add_url_rule("/crash", "crash", lambda: Response("boom", status=500))
    config = fuzz_config(max_examples=5)
    report = run_schemathesis(schemathesis.openapi.from_wsgi("/openapi.json", broken, config=config))
    found = "\n".join(report.problems)
    assert "GET /thing" in found and "response_schema_conformance" in found, found
    assert "GET /crash" in found and "not_a_server_error" in found, found


def _path_value(name: str, seeded: Seeded) -> str:
    """A value for path parameter `name` that exists and belongs to the seeded user."""
    known = {"photo_id": seeded.photo_id, "album_id": seeded.album_id, "token": seeded.share_token}
    return str(known.get(name, 1))


def test_every_secured_operation_needs_a_valid_token(
    app: Flask, client: FlaskClient, seeded: Seeded, subtests: pytest.Subtests
) -> None:
    # What `ignored_auth` would check: no token, or a bad one, is 401 with the challenge, before any
    # other processing (the ids in the paths exist and belong to the token's user).
    spec = client.get("/openapi.json").get_json()
    public: set[str] = set()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not op.get("security"):
                public.add(f"{method.upper()} {path}")
                continue
            url = path
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    url = url.replace("{" + param["name"] + "}", _path_value(param["name"], seeded))
            for authorization in (None, "Bearer not-a-token", f"Basic {seeded.token}"):
                with subtests.test(method=method.upper(), path=path, authorization=authorization):
                    headers = {"Authorization": authorization} if authorization else {}
                    r = client.open(url, method=method.upper(), headers=headers, json={})
                    assert r.status_code == 401, r.get_data(as_text=True)
                    assert r.headers["WWW-Authenticate"] == "Bearer"
                    assert r.mimetype == "application/problem+json"
    assert public == PUBLIC_OPERATIONS  # a new operation without auth is a decision, made here


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
# Range headers a client or a scanner might send: well-formed, suffix, open, reversed, several ranges,
# huge numbers, other units and junk.
RANGE_VALUES = st.one_of(
    st.builds(
        "bytes={}-{}".format,
        st.one_of(st.just(""), st.integers(0, 2000).map(str), st.integers(0, 10**30).map(str)),
        st.one_of(st.just(""), st.integers(0, 2000).map(str), st.integers(0, 10**30).map(str)),
    ),
    st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=2, max_size=4).map(
        lambda pairs: "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs)
    ),
    st.from_regex(r"\A(bytes|items|BYTES) ?= ?-?[0-9]{0,25}-?[0-9]{0,25}\Z"),
    st.text(PRINTABLE, max_size=40),
)
ETAG_VALUES = st.one_of(st.just("*"), st.just("<etag>"), st.just('W/<etag>, "other"'), st.text(PRINTABLE, max_size=40))


def test_image_range_and_conditional_headers(app: Flask, seeded: Seeded) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=fuzz_config())
    etag = app.test_client().get(f"/photos/{seeded.photo_id}/image", headers=seeded.headers).headers["ETag"]
    own = schema["/photos/{photo_id}/image"]["GET"]
    shared = schema["/share/{token}/photos/{photo_id}/image"]["GET"]
    checks = [getattr(schemathesis.checks, name) for name in CHECKS if name != "unsupported_method"]
    seen: Counter[int] = Counter()

    @settings(
        max_examples=RANGE_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    # The answers a generator reaches only by luck, made certain: a part of each route's image, and past its end.
    @example(public=False, range_="bytes=0-99", if_none_match=None, if_range=None)
    @example(public=True, range_="bytes=-10", if_none_match='"other"', if_range="<etag>")
    @example(public=False, range_="bytes=100000-", if_none_match=None, if_range=None)
    @given(
        public=st.booleans(),
        range_=st.none() | RANGE_VALUES,
        if_none_match=st.none() | ETAG_VALUES,
        if_range=st.none() | ETAG_VALUES,
    )
    def request_image(public: bool, range_: str | None, if_none_match: str | None, if_range: str | None) -> None:
        headers = {} if public else dict(seeded.headers)
        for name, value in (("Range", range_), ("If-None-Match", if_none_match), ("If-Range", if_range)):
            if value is not None and value.strip():  # a header value cannot start or end with a space
                headers[name] = value.strip().replace("<etag>", etag)
        path = {"photo_id": seeded.photo_id} | ({"token": seeded.share_token} if public else {})
        case = (shared if public else own).Case(path_parameters=path, headers=headers)
        response = case.call_and_validate(checks=checks)
        assert response.status_code in {200, 206, 304, 416}, (headers, response.status_code)
        seen[response.status_code] += 1

    request_image()
    assert set(seen) == {200, 206, 304, 416}, seen  # every kind of answer was reached and validated


def test_optional_bodies_and_closed_choices_are_documented(client: FlaskClient) -> None:
    # Found by schemathesis's negative_data_rejection / positive_data_acceptance checks: the document
    # said a share link needs a body (it does not) and that any string is a content type (only four are).
    spec = client.get("/openapi.json").get_json()
    assert spec["paths"]["/albums/{album_id}/share"]["post"]["requestBody"]["required"] is False
    assert spec["paths"]["/photos/confirm"]["post"]["requestBody"]["required"] is True
    presign = spec["components"]["schemas"]["PresignIn"]["properties"]["content_type"]
    assert presign["enum"] == list(ALLOWED_IMAGE_TYPES)
