"""CDN auth tokens against loopback doubles of NHN's token API and of a token-checking CDN edge."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from photo_api.clients import build_cdn_tokens
from photo_api.clients.cdn import (
    CdnTokens,
    CdnUnavailableError,
    InvalidCdnPathError,
    compute_token,
    escape,
    safety_margin,
)
from photo_api.config import load_settings
from photo_api.resilience import Policies, Policy, Resilient
from tests.doubles.nhn_cdn import CdnApiDouble, CdnEdgeDouble, nhn_token

APP_KEY = "cdn-app-key-1"
SECRET_KEY = "cdn-secret-key-1"
ENCRYPT_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978"
PREFIX = "/photos"
SINGLE_PATH_TOKEN = re.compile(r"^exp=(\d+)~hmac=[0-9a-f]{64}$")


class Clock:
    """Unix time that only moves when a test moves it (shared by the client and both doubles)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> Iterator[CdnApiDouble]:
    double = CdnApiDouble(app_key=APP_KEY, secret_key=SECRET_KEY, clock=clock)
    with double.server:
        yield double


@pytest.fixture
def edge(clock: Clock) -> Iterator[CdnEdgeDouble]:
    double = CdnEdgeDouble(encrypt_key=ENCRYPT_KEY, clock=clock)
    with double.server:
        yield double


def cdn_policy(**overrides: Any) -> Policy:
    values: dict[str, Any] = dict(
        service="cdn",
        connect_timeout=1,
        read_timeout=1,
        deadline=5,
        max_tries=3,
        max_time=5,
        base_delay=0,
        max_delay=0,
        failure_threshold=3,
        recovery_timeout=30,
    )
    values.update(overrides)
    return Policy(**values)


def make_tokens(
    api: CdnApiDouble | None,
    edge: CdnEdgeDouble,
    clock: Clock,
    *,
    mode: str = "api",
    secret_key: str = SECRET_KEY,
    cache_size: int = 100,
    **policy: Any,
) -> CdnTokens:
    return CdnTokens(
        domain=edge.server.netloc,
        scheme="http",
        encrypt_key=ENCRYPT_KEY,
        mode=mode,  # type: ignore[arg-type]
        app_key=APP_KEY,
        secret_key=secret_key,
        api_url=api.server.url if api is not None else "http://127.0.0.1:9",
        resilient=Resilient(cdn_policy(**policy)),
        path_prefix=PREFIX,
        cache_size=cache_size,
        clock=clock,
    )


@dataclass
class Fetched:
    status_code: int
    content: bytes


def fetch(url: str) -> Fetched:
    """GET `url` exactly as written, as a browser following the redirect would.

    (requests would re-case the percent escapes of the query, which changes a signed ACL.)
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=5)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = conn.getresponse()
        return Fetched(response.status, response.read())
    finally:
        conn.close()


def test_api_mode_url_is_served_by_the_edge(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    edge.objects["/photos/abc.jpg"] = b"\xff\xd8jpeg bytes"
    tokens = make_tokens(api, edge, clock)

    url = tokens.signed_url("abc.jpg", 600)

    assert url.startswith(f"http://{edge.server.netloc}/photos/abc.jpg?token=exp=")
    assert api.received == [{"encryptKey": ENCRYPT_KEY, "durationSeconds": 600, "singlePath": "/photos/abc.jpg"}]
    r = fetch(url)
    assert r.status_code == 200
    assert r.content == b"\xff\xd8jpeg bytes"


def test_edge_refuses_tampered_foreign_missing_and_expired_tokens(
    api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock
) -> None:
    edge.objects["/photos/abc.jpg"] = b"a"
    edge.objects["/photos/other.jpg"] = b"b"
    url = make_tokens(api, edge, clock).signed_url("abc.jpg", 600)
    token = url.split("?token=", 1)[1]
    assert fetch(url).status_code == 200

    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert fetch(url.replace(token, flipped)).status_code == 403
    longer = token.replace("exp=", "exp=9", 1)  # a forged expiry does not match the HMAC
    assert fetch(url.replace(token, longer)).status_code == 403
    assert fetch(url.replace("/photos/abc.jpg", "/photos/other.jpg")).status_code == 403
    assert fetch(url.split("?", 1)[0]).status_code == 403

    clock.now += 601
    assert fetch(url).status_code == 403


def test_non_ascii_and_space_names_are_percent_encoded(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    key = "여행/바다 사진 1.jpg"
    edge.objects[f"{PREFIX}/{key}"] = b"korean"
    tokens = make_tokens(api, edge, clock)

    url = tokens.signed_url(key, 600)

    encoded = "/photos/%EC%97%AC%ED%96%89/%EB%B0%94%EB%8B%A4%20%EC%82%AC%EC%A7%84%201.jpg"
    assert url.startswith(f"http://{edge.server.netloc}{encoded}?token=")
    assert api.received[0]["singlePath"] == encoded
    r = fetch(url)
    assert (r.status_code, r.content) == (200, b"korean")


@pytest.mark.parametrize("key", ["wow!.jpg", "a~b.jpg"])
def test_paths_with_bang_or_tilde_are_refused_before_any_call(
    api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock, key: str
) -> None:
    tokens = make_tokens(api, edge, clock)
    with pytest.raises(InvalidCdnPathError) as info:
        tokens.signed_url(key, 600)
    assert isinstance(info.value, CdnUnavailableError)  # so the route streams instead
    assert api.requests == 0


def test_is_successful_false_for_bad_secret_is_a_failure_not_retried_and_cooled_down(
    api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock
) -> None:
    tokens = make_tokens(api, edge, clock, secret_key="wrong-secret")

    with pytest.raises(CdnUnavailableError) as info:
        tokens.signed_url("abc.jpg", 600)
    assert info.value.reason == "misconfigured"
    assert api.requests == 1  # 20002 will not change on a retry

    with pytest.raises(CdnUnavailableError):
        tokens.signed_url("abc.jpg", 600)
    assert api.requests == 1  # cooling down: no round trip per image request

    clock.now += 61
    with pytest.raises(CdnUnavailableError):
        tokens.signed_url("abc.jpg", 600)
    assert api.requests == 2
    assert tokens.breaker_state == "closed"  # a configuration error says nothing about the API's health


def test_processing_failure_result_code_is_retried_then_unavailable(
    api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock
) -> None:
    api.force_result = (30000, "processing failure")
    tokens = make_tokens(api, edge, clock, max_tries=3)

    with pytest.raises(CdnUnavailableError) as info:
        tokens.signed_url("abc.jpg", 600)

    assert info.value.reason == "exhausted"
    assert api.requests == 3


def test_transient_http_errors_are_retried(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    edge.objects["/photos/abc.jpg"] = b"ok"
    api.http_failures = [500, 503]
    url = make_tokens(api, edge, clock, max_tries=3).signed_url("abc.jpg", 600)
    assert api.requests == 3
    assert fetch(url).status_code == 200


def test_other_http_errors_are_not_retried(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    api.http_failures = [403]
    tokens = make_tokens(api, edge, clock, max_tries=3)
    with pytest.raises(CdnUnavailableError) as info:
        tokens.signed_url("abc.jpg", 600)
    assert info.value.reason == "rejected"
    assert api.requests == 1


def test_slow_api_gives_up_at_the_read_timeout(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    api.server.delay = 1.0
    tokens = make_tokens(api, edge, clock, read_timeout=0.2, max_tries=1)
    started = time.perf_counter()
    with pytest.raises(CdnUnavailableError):
        tokens.signed_url("abc.jpg", 600)
    assert time.perf_counter() - started < 0.8


def test_open_breaker_fails_fast_without_calling_the_api(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    api.http_failures = [500] * 100
    tokens = make_tokens(api, edge, clock, max_tries=1, failure_threshold=2)
    for _ in range(2):
        with pytest.raises(CdnUnavailableError):
            tokens.signed_url("abc.jpg", 600)
    assert api.requests == 2
    assert tokens.breaker_state == "open"

    started = time.perf_counter()
    with pytest.raises(CdnUnavailableError) as info:
        tokens.signed_url("other.jpg", 600)
    assert time.perf_counter() - started < 0.05
    assert info.value.reason == "circuit_open"
    assert info.value.retry_after >= 1
    assert api.requests == 2  # the API was not called at all


def test_local_mode_token_has_the_documented_shape_and_is_served(edge: CdnEdgeDouble, clock: Clock) -> None:
    edge.objects["/photos/사진 1.jpg"] = b"local"
    tokens = make_tokens(None, edge, clock, mode="local")

    url = tokens.signed_url("사진 1.jpg", 600)

    token = url.split("?token=", 1)[1]
    m = SINGLE_PATH_TOKEN.match(token)
    assert m, token
    assert int(m.group(1)) == int(clock.now) + 600
    r = fetch(url)
    assert (r.status_code, r.content) == (200, b"local")
    assert tokens.breaker_state == "closed"


def test_local_token_is_byte_for_byte_the_api_token(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    for key in ("abc.jpg", "여행/바다 사진.png", "a b/c+d%e.gif"):
        from_api = make_tokens(api, edge, clock).signed_url(key, 7200)
        local = make_tokens(None, edge, clock, mode="local").signed_url(key, 7200)
        assert local == from_api


def test_wildcard_acl_is_escaped_as_documented(edge: CdnEdgeDouble, clock: Clock) -> None:
    assert escape("/nhn/*.png") == "%2fnhn%2f*.png"
    expires = int(clock.now) + 600

    token = compute_token(ENCRYPT_KEY, expires=expires, acl=["/nhn/*.png"])

    assert re.match(rf"^exp={expires}~acl=%2fnhn%2f\*\.png~hmac=[0-9a-f]{{64}}$", token), token
    assert token == nhn_token(ENCRYPT_KEY, expires, acl=["/nhn/*.png"])
    edge.objects["/nhn/a.png"] = b"png"
    assert fetch(f"{edge.server.url}/nhn/a.png?token={token}").status_code == 200
    assert fetch(f"{edge.server.url}/other/a.png?token={token}").status_code == 403
    multi = compute_token(ENCRYPT_KEY, expires=expires, acl=["/a/*", "/b/*"])
    assert "~acl=%2fa%2f*%21%2fb%2f*~" in multi  # the joining `!` is escaped too


def test_compute_token_needs_exactly_one_kind_of_path() -> None:
    with pytest.raises(ValueError):
        compute_token(ENCRYPT_KEY, expires=1)
    with pytest.raises(ValueError):
        compute_token(ENCRYPT_KEY, expires=1, path="/a", acl=["/b/*"])


def test_second_call_is_served_from_the_cache(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    tokens = make_tokens(api, edge, clock)
    first = tokens.signed_url("abc.jpg", 600)
    second = tokens.signed_url("abc.jpg", 600)
    assert first == second
    assert api.requests == 1


def test_durations_are_cached_separately(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    tokens = make_tokens(api, edge, clock)
    short = tokens.signed_url("abc.jpg", 600)
    long = tokens.signed_url("abc.jpg", 7200)
    assert short != long
    assert f"exp={int(clock.now) + 600}~" in short
    assert f"exp={int(clock.now) + 7200}~" in long
    assert tokens.signed_url("abc.jpg", 600) == short
    assert tokens.signed_url("abc.jpg", 7200) == long
    assert api.requests == 2


def test_token_near_expiry_is_not_served(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    tokens = make_tokens(api, edge, clock)
    margin = safety_margin(600)
    assert margin == 60
    first = tokens.signed_url("abc.jpg", 600)

    clock.now += 600 - margin - 1
    assert tokens.signed_url("abc.jpg", 600) == first
    assert api.requests == 1

    clock.now += 2  # now inside the margin
    renewed = tokens.signed_url("abc.jpg", 600)
    assert renewed != first
    assert api.requests == 2


def test_cache_is_a_bounded_lru(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    tokens = make_tokens(api, edge, clock, cache_size=2)
    for key in ("a.jpg", "b.jpg", "a.jpg", "c.jpg"):  # c evicts b, the least recently used
        tokens.signed_url(key, 600)
    assert api.requests == 3
    assert len(tokens.cache) == 2
    tokens.signed_url("a.jpg", 600)
    tokens.signed_url("c.jpg", 600)
    assert api.requests == 3
    tokens.signed_url("b.jpg", 600)
    assert api.requests == 4


def test_cache_size_zero_disables_caching(api: CdnApiDouble, edge: CdnEdgeDouble, clock: Clock) -> None:
    tokens = make_tokens(api, edge, clock, cache_size=0)
    tokens.signed_url("abc.jpg", 600)
    tokens.signed_url("abc.jpg", 600)
    assert api.requests == 2
    assert len(tokens.cache) == 0


def test_safety_margin_never_swallows_a_short_token() -> None:
    assert safety_margin(7200) == 720
    assert safety_margin(120) == 30
    assert safety_margin(10) == 5


@pytest.mark.parametrize(
    ("app_key", "secret", "body", "code"),
    [
        ("nope", SECRET_KEY, {"encryptKey": ENCRYPT_KEY, "durationSeconds": 1, "singlePath": "/a"}, 20001),
        (APP_KEY, "nope", {"encryptKey": ENCRYPT_KEY, "durationSeconds": 1, "singlePath": "/a"}, 20002),
        (APP_KEY, SECRET_KEY, {"durationSeconds": 1, "singlePath": "/a"}, 10033),
        (APP_KEY, SECRET_KEY, {"encryptKey": ENCRYPT_KEY, "singlePath": "/a"}, 10034),
        (APP_KEY, SECRET_KEY, {"encryptKey": ENCRYPT_KEY, "durationSeconds": 1}, 10036),
        (APP_KEY, SECRET_KEY, {"encryptKey": ENCRYPT_KEY, "durationSeconds": 1, "singlePath": "a"}, 10037),
        (APP_KEY, SECRET_KEY, {"encryptKey": ENCRYPT_KEY, "durationSeconds": 1, "singlePath": "/a!b"}, 10038),
    ],
)
def test_api_double_answers_200_with_documented_result_codes(
    api: CdnApiDouble, app_key: str, secret: str, body: dict[str, Any], code: int
) -> None:
    r = requests.post(
        f"{api.server.url}/v2.0/appKeys/{app_key}/auth-token", json=body, headers={"Authorization": secret}, timeout=5
    )
    assert r.status_code == 200
    header = r.json()["header"]
    assert (header["isSuccessful"], header["resultCode"]) == (False, code)
    assert header["resultMessage"]


def test_policy_and_client_from_settings() -> None:
    settings = load_settings(
        environ={},
        nhn_cdn_domain="cdn.example.toastcdn.net",
        nhn_cdn_app_key=APP_KEY,
        nhn_cdn_secret_key=SECRET_KEY,
        nhn_cdn_encrypt_key=ENCRYPT_KEY,
        nhn_storage_container="photos",
        cdn_timeout=4,
        http_timeout_connect=2,
        retry_max_tries=4,
        breaker_failure_threshold=7,
    )
    policies = Policies.from_settings(settings)
    policy = policies.cdn
    assert (policy.connect_timeout, policy.read_timeout, policy.deadline) == (2, 4, 4)
    assert (policy.max_tries, policy.failure_threshold) == (4, 7)
    log_policy = policies.log
    assert log_policy.read_timeout == settings.log_service_timeout
    assert log_policy.deadline >= settings.retry_max_time + log_policy.read_timeout
    # A policy for every outbound dependency, and no other: there is no name to get wrong.
    assert {f.name for f in fields(policies)} == {"storage", "storage_auth", "cdn", "log"}

    tokens = build_cdn_tokens(settings)
    assert tokens is not None
    assert (tokens.mode, tokens.path_prefix, tokens.cache.max_entries) == ("api", "/photos", 1000)
    assert tokens.cdn_path("a b.jpg") == "/photos/a%20b.jpg"
    assert build_cdn_tokens(load_settings(environ={})) is None
