"""Metrics outside gunicorn (Flask test client, `flask run`): recorded in an in-process registry with the
same names and labels, on PostgreSQL and SQLite; nothing at all with METRICS_ENABLED=false.

The registry is shared by every app of the test process, so each test compares before and after.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from photo_api import create_app, metrics
from photo_api.api.context import collaborators_of
from photo_api.config import Settings
from photo_api.errors import PayloadTooLargeError
from photo_api.metrics.push import Pusher
from tests.doubles.http import LoopbackServer, Reply
from tests.harness.users import Users
from tests.metrics.conftest import Scrape, parse

PUSH_WAIT_S = 10
# About 20 ms on either database: slower than the 1 ms threshold set below, whatever the machine.
SLOW_STATEMENT = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) SELECT count(*) FROM c"
)


def snapshot() -> Scrape:
    return parse(metrics.render().decode())


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return (after.value(name, **labels) or 0) - (before.value(name, **labels) or 0)


def test_requests_are_counted_by_route_template(client: FlaskClient, users: Users) -> None:
    user = users.create()
    before = snapshot()
    assert client.get("/auth/me", headers=user["headers"]).status_code == 200
    assert client.get("/photos/424242", headers=user["headers"]).status_code == 404
    assert client.get("/nowhere/424242").status_code == 404
    assert client.get("/health").status_code == 200
    after = snapshot()

    me = {"method": "GET", "endpoint": "/auth/me"}
    assert delta(before, after, "photo_api_http_requests_total", **me, status="200") == 1
    assert delta(before, after, "photo_api_http_request_duration_seconds_count", **me) == 1
    photo = {"method": "GET", "endpoint": "/photos/<int:photo_id>", "status": "404"}
    assert delta(before, after, "photo_api_http_requests_total", **photo) == 1
    assert delta(before, after, "photo_api_http_requests_total", method="GET", endpoint="unmatched", status="404") == 1
    assert "424242" not in after.text
    assert after.value("photo_api_http_requests_in_flight") == 0
    assert after.value("photo_api_ready") == 1
    assert after.value("photo_api_health_check_status", check="database") == 1
    assert after.value("photo_api_draining") == 0


def test_an_exception_no_handler_turns_into_an_answer_still_counts_as_500(app: Flask) -> None:
    def boom() -> str:
        raise RuntimeError("boom")

    app.add_url_rule("/boom", view_func=boom)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    before = snapshot()
    assert app.test_client().get("/boom").status_code == 500
    after = snapshot()
    assert delta(before, after, "photo_api_http_requests_total", method="GET", endpoint="/boom", status="500") == 1
    assert after.value("photo_api_http_requests_in_flight") == 0


def test_pool_usage_and_slow_queries(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(db_slow_query_ms=1))
    db = collaborators_of(app).db
    try:
        before = snapshot()
        with db.engine.connect() as conn:
            held = snapshot()
            conn.execute(text(SLOW_STATEMENT))
        after = snapshot()
    finally:
        db.dispose()
    assert delta(before, held, "photo_api_db_pool_connections_in_use") == 1
    assert delta(before, after, "photo_api_db_pool_connections_in_use") == 0
    assert delta(before, after, "photo_api_db_slow_queries_total") >= 1


def test_overflow_counts_connections_beyond_the_pool_size(make_settings: Callable[..., Settings]) -> None:
    app = create_app(make_settings(db_pool_size=1, db_max_overflow=2))
    db = collaborators_of(app).db
    try:
        before = snapshot()
        with db.engine.connect(), db.engine.connect(), db.engine.connect():
            during = snapshot()
        after = snapshot()
    finally:
        db.dispose()
    assert delta(before, during, "photo_api_db_pool_connections_in_use") == 3
    assert delta(before, during, "photo_api_db_pool_connections_overflow") == 2
    assert delta(before, after, "photo_api_db_pool_connections_overflow") == 0


@pytest.fixture
def disabled_app(make_settings: Callable[..., Settings]) -> Iterator[Flask]:
    app = create_app(make_settings(metrics_enabled=False))
    yield app
    collaborators_of(app).db.dispose()


def test_disabled_means_no_hooks(disabled_app: Flask) -> None:
    before = snapshot()
    assert disabled_app.test_client().get("/health/liveness").status_code == 200
    after = snapshot()
    assert (
        delta(before, after, "photo_api_http_requests_total", method="GET", endpoint="/health/liveness", status="200")
        == 0
    )


def test_domain_helpers_keep_labels_bounded(app: Flask) -> None:
    before = snapshot()
    metrics.upload("multipart", "ok", 1000)
    metrics.upload("carrier-pigeon", "lost")  # a slip in route code: recorded, but as "other"
    with metrics.upload_attempt("presigned") as attempt:
        attempt.stored(250)
    with pytest.raises(PayloadTooLargeError), metrics.upload_attempt("presigned"):
        raise PayloadTooLargeError()
    with pytest.raises(RuntimeError), metrics.upload_attempt("presigned"):
        raise RuntimeError("storage broke")
    metrics.image_delivery("stream", metrics.delivery_result(206))
    metrics.image_delivery("cdn", metrics.delivery_result(302))
    metrics.share_view()
    metrics.fallback("cdn")
    metrics.log_queue_depth(7)
    metrics.log_dropped(3)
    after = snapshot()

    assert delta(before, after, "photo_api_uploads_total", method="multipart", result="ok") == 1
    assert delta(before, after, "photo_api_upload_bytes_total", method="multipart") == 1000
    assert delta(before, after, "photo_api_uploads_total", method="other", result="other") == 1
    assert delta(before, after, "photo_api_uploads_total", method="presigned", result="ok") == 1
    assert delta(before, after, "photo_api_upload_bytes_total", method="presigned") == 250
    assert delta(before, after, "photo_api_uploads_total", method="presigned", result="rejected") == 1
    assert delta(before, after, "photo_api_uploads_total", method="presigned", result="failed") == 1
    assert delta(before, after, "photo_api_image_deliveries_total", path="stream", result="partial") == 1
    assert delta(before, after, "photo_api_image_deliveries_total", path="cdn", result="ok") == 1
    assert delta(before, after, "photo_api_share_views_total") == 1
    assert delta(before, after, "photo_api_fallbacks_total", service="cdn") == 1
    assert after.value("photo_api_log_queue_depth") == 7
    assert delta(before, after, "photo_api_log_dropped_total") == 3


def test_the_pusher_logs_its_url_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    password, token = "push-password-do-not-log", "push-token-do-not-log"
    answers = iter([500, 200, 200, 500])  # the push fails, works again, the final push works, the delete fails
    with LoopbackServer(lambda request: Reply(next(answers))) as gateway:
        log = logging.getLogger("tests.pusher")
        with caplog.at_level(logging.INFO, logger="tests.pusher"):
            # A Pushgateway behind basic auth (not reachable so: the user info is not a host name)...
            userinfo = Pusher(
                f"http://pusher:{password}@{gateway.netloc}",
                job="photo-api",
                instance="vm-1",
                registry=CollectorRegistry(),
                interval=60,
                log=log,
            )
            assert not userinfo.push()
            # ...and one taking a token in its query: failing, recovering, leaving, failing to delete.
            query = Pusher(
                f"{gateway.url}/?token={token}",
                job="photo-api",
                instance="vm-1",
                registry=CollectorRegistry(),
                interval=60,
                log=log,
            )
            query.start()  # the first push, from the pusher's thread
            deadline = time.monotonic() + PUSH_WAIT_S
            while len(caplog.records) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert query.push()
            query.leave(linger=0)
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(" (")[0].split(" to ")[0].split(" from ")[0] for line in lines] == [
        "metrics: push",
        "metrics: push",
        "metrics: pushing",
        "metrics: could not delete group {'instance': 'vm-1'}",
    ], lines
    assert f"http://pusher:***@{gateway.netloc}" in lines[0]
    assert f"{gateway.url}/?token=***" in lines[1]
    for line in lines:
        assert password not in line and token not in line
