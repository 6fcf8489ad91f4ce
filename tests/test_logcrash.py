"""Log & Crash shipping against a loopback double of the collector: batching, results, faults, shutdown."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from photo_api import create_app
from photo_api.api.context import collaborators_of
from photo_api.clients import build_log_shipper
from photo_api.clients.logcrash import LogShipper
from photo_api.config import Settings, load_settings
from photo_api.logs.logcrash import TRUNCATED_MARK, custom_key, sanitise_version
from photo_api.resilience import Policy, Resilient
from tests import python_child
from tests.doubles.logcrash import BAD_KEY_MESSAGE, BASIC_FIELDS, LogCollectorDouble

APPKEY = "lnc-appkey-1"
CUSTOM_KEY_RULE = r"^[A-Za-z][A-Za-z0-9_-]*$"


@pytest.fixture
def collector() -> Iterator[LogCollectorDouble]:
    double = LogCollectorDouble(projects={APPKEY})
    with double.server:
        yield double


def log_policy(**overrides: Any) -> Policy:
    values: dict[str, Any] = dict(
        service="log",
        connect_timeout=0.5,
        read_timeout=0.5,
        deadline=10,
        max_tries=3,
        max_time=5,
        base_delay=0.01,
        max_delay=0.02,
        failure_threshold=5,
        recovery_timeout=30,
    )
    values.update(overrides)
    return Policy(**values)


ShipperFactory = Callable[..., tuple[LogShipper, logging.Logger]]


@pytest.fixture
def make_shipper(collector: LogCollectorDouble) -> Iterator[ShipperFactory]:
    """Build a started shipper on a private logger; everything is closed at teardown."""
    made: list[LogShipper] = []

    def build(
        *,
        appkey: str = APPKEY,
        queue_size: int = 1000,
        batch_size: int = 100,
        flush_interval: float = 0.05,
        context: Callable[[], dict[str, Any]] | None = None,
        on_dropped: Callable[[str, int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        **policy: Any,
    ) -> tuple[LogShipper, logging.Logger]:
        shipper = LogShipper(
            url=f"{collector.server.url}/v2/log",
            appkey=appkey,
            project_version="1.2.3+dev 4",
            host="10.0.0.7",
            resilient=Resilient(log_policy(**policy)),
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval=flush_interval,
            level=logging.DEBUG,
            context=context,
            static_fields={"service": "photo-api", "node": "vm-1"},
            on_dropped=on_dropped,
            on_depth=on_depth,
        )
        logger = logging.getLogger(f"test.logcrash.{uuid.uuid4().hex[:8]}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        shipper.install(logger)
        made.append(shipper)
        return shipper, logger

    yield build
    for shipper in made:
        shipper.close(timeout=0.2)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_batches_arrive_as_arrays_with_documented_fields(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    shipper, logger = make_shipper(batch_size=3, flush_interval=60, context=lambda: {"request_id": "req-1"})
    before = int(time.time())
    logger.info("first", extra={"photo_id": 7, "9lives": "p", "bad key": "b", "body": "clash", "_internal": "i"})
    logger.warning("second %s", "arg", extra={"detail": "x" * 2000})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("third")
    after = int(time.time())

    wait_for(lambda: shipper.sent == 3)
    assert collector.requests == 1
    batch = json.loads(collector.bodies[0])
    assert isinstance(batch, list) and len(batch) == 3
    first, second, third = batch
    for item in batch:
        assert item["projectName"] == APPKEY
        assert item["projectVersion"] == "1.2.3_dev_4"
        assert item["logVersion"] == "v2"
        assert item["logSource"] == "API"
        assert item["logType"] == "log"
        assert item["host"] == "10.0.0.7"
        assert item["sendTime"].isdigit() and before <= int(item["sendTime"]) <= after
        assert item["request_id"] == "req-1"
        assert item["service"] == "photo-api"
        assert all(k in BASIC_FIELDS or re.match(CUSTOM_KEY_RULE, k) for k in item)
    assert [i["lncBulkIndex"] for i in batch] == sorted(i["lncBulkIndex"] for i in batch)
    assert len({i["lncBulkIndex"] for i in batch}) == 3
    assert (first["body"], second["body"], third["body"]) == ("first", "second arg", "third")
    assert (first["logLevel"], second["logLevel"], third["logLevel"]) == ("INFO", "WARN", "ERROR")
    assert first["photo_id"] == "7"
    assert (first["x9lives"], first["bad_key"], first["xbody"]) == ("p", "b", "clash")
    assert "_internal" not in first and "x_internal" not in first  # underscore fields are private, as in stdout logs
    assert second["txtDetail"] == "x" * 2000 and "detail" not in second
    assert "Traceback" in third["txtException"] and "ZeroDivisionError" in third["txtException"]
    assert shipper.sent == 3 and shipper.dropped == 0


def test_a_partial_batch_is_sent_after_the_flush_interval(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    _, logger = make_shipper(batch_size=100, flush_interval=0.1)
    started = time.monotonic()
    logger.info("lonely")
    wait_for(lambda: len(collector.accepted) == 1, timeout=2)
    assert time.monotonic() - started >= 0.09


def test_custom_keys_follow_the_naming_rule() -> None:
    for name in ("_xxx", "9lives", "bad key", "ok-key_1", "body", "한글", "sendTime"):
        key = custom_key(name)
        assert re.match(CUSTOM_KEY_RULE, key), key
        assert key not in {"body", "sendTime"}
    assert sanitise_version("1.0.0+source") == "1.0.0_source"


def test_long_message_is_cut_to_a_searchable_size(collector: LogCollectorDouble, make_shipper: ShipperFactory) -> None:
    shipper, logger = make_shipper()
    logger.info("가" * 2_000_000)  # 6 MB of UTF-8
    assert shipper.drain(5)
    body = collector.accepted[0]["body"]
    assert len(body.encode()) <= 1_000_000 and body.endswith(TRUNCATED_MARK)


def test_an_item_over_8_mb_is_dropped_and_counted(collector: LogCollectorDouble, make_shipper: ShipperFactory) -> None:
    shipper, logger = make_shipper()
    logger.info("huge", extra={f"field{i}": "y" * 1_100_000 for i in range(9)})  # nine txt fields of ~1 MB
    logger.info("small")
    assert shipper.drain(5)
    assert shipper.dropped_by_reason["oversize"] == 1
    assert [i["body"] for i in collector.accepted] == ["small"]


def test_collector_double_enforces_the_size_limits(collector: LogCollectorDouble) -> None:
    base = {"projectName": APPKEY, "projectVersion": "1.0", "logVersion": "v2"}
    r = requests.post(f"{collector.server.url}/v2/log", json=[{**base, "body": "z" * 8_400_000}], timeout=10)
    assert r.json()["body"]["data"]["resultList"][0]["isSuccessful"] is False
    too_big = b"[" + b" " * (52 * 1024 * 1024) + b"]"
    r = requests.post(
        f"{collector.server.url}/v2/log", data=too_big, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 413


def test_unknown_project_items_are_counted_and_never_resent(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    shipper, logger = make_shipper(appkey="not-registered")
    logger.info("a")
    logger.info("b")
    assert shipper.drain(5)
    time.sleep(0.2)  # four flush intervals: a resend would have happened by now

    assert collector.requests == 1
    assert collector.accepted == []
    assert shipper.dropped_by_reason["rejected"] == 2
    assert shipper.sent == 0


def test_only_the_failed_items_of_a_batch_are_dropped(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    collector.item_failure = lambda item: BAD_KEY_MESSAGE if item["body"] == "bad" else None
    shipper, logger = make_shipper(batch_size=3, flush_interval=60)
    for body in ("good", "bad", "fine"):
        logger.info(body)
    wait_for(lambda: shipper.sent + shipper.dropped == 3)

    assert [i["body"] for i in collector.accepted] == ["good", "fine"]
    assert shipper.sent == 2
    assert shipper.dropped_by_reason["rejected"] == 1
    time.sleep(0.2)
    assert collector.requests == 1


def test_collector_double_reports_per_item_failures(collector: LogCollectorDouble) -> None:
    base = {"projectName": APPKEY, "projectVersion": "1.0", "logVersion": "v2", "body": "x"}
    items = [base, {**base, "_xxx": "bad"}, {**base, "logVersion": "v1"}, {**base, "projectName": "nope"}]
    r = requests.post(f"{collector.server.url}/v2/log", json=items, timeout=5)

    data = r.json()["body"]["data"]
    assert r.json()["header"]["isSuccessful"] is True
    assert (data["total"], data["errors"]) == (4, 3)
    assert [x["isSuccessful"] for x in data["resultList"]] == [True, False, False, False]
    assert data["resultList"][1]["resultMessage"] == BAD_KEY_MESSAGE
    assert data["resultList"][2]["resultMessage"].startswith("LogVersion Mismatch")
    assert data["resultList"][3]["resultMessage"] == "The project(nope) is not registered"
    single = requests.post(f"{collector.server.url}/v2/log", json=base, timeout=5).json()
    assert single == {"header": {"isSuccessful": True, "resultCode": 0, "resultMessage": "Success"}}


def test_collector_errors_are_retried_until_it_recovers(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    collector.http_failures = [500, 503]
    shipper, logger = make_shipper(max_tries=3)
    logger.info("eventually")
    assert shipper.drain(5)

    assert collector.requests == 3
    assert [i["body"] for i in collector.accepted] == ["eventually"]
    assert shipper.dropped == 0


def test_a_batch_that_gives_up_is_dropped_and_counted(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    collector.http_failures = [500] * 3
    shipper, logger = make_shipper(max_tries=3)
    logger.info("lost")
    assert shipper.drain(5)
    assert shipper.dropped_by_reason["unavailable"] == 1
    logger.info("next")
    assert shipper.drain(5)
    assert [i["body"] for i in collector.accepted] == ["next"]


def test_open_breaker_drops_batches_without_calling(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    collector.http_failures = [500] * 100
    reported: list[tuple[str, int]] = []
    depths: list[int] = []
    shipper, logger = make_shipper(
        max_tries=1,
        failure_threshold=2,
        on_dropped=lambda reason, n: reported.append((reason, n)),
        on_depth=depths.append,
    )
    for i in range(4):
        logger.info("record %d", i)
        assert shipper.drain(5)
    assert collector.requests == 2
    assert shipper.resilient.state == "open"
    assert shipper.dropped_by_reason["unavailable"] == 4
    assert reported == [("unavailable", 1)] * 4  # the metric hook sees every drop
    assert depths and depths[-1] == 0


@pytest.mark.parametrize("fault", ["down", "blackhole"])
def test_dead_collector_never_slows_logging_and_overflow_is_counted(
    collector: LogCollectorDouble, make_shipper: ShipperFactory, fault: str
) -> None:
    if fault == "down":
        collector.server.stop()
    else:
        collector.server.blackhole = True
    shipper, logger = make_shipper(queue_size=100, batch_size=10, flush_interval=0.01, read_timeout=0.5)
    logger.info("warm-up")  # the worker takes it and gets stuck (blackhole) or fails (down)
    time.sleep(0.05)

    started = time.perf_counter()
    for i in range(1000):
        logger.info("record %d", i, extra={"i": i})
    elapsed = time.perf_counter() - started

    assert elapsed < 0.1, f"1000 records took {elapsed * 1000:.0f} ms"
    assert shipper.queue_depth <= 100
    assert shipper.dropped_by_reason["queue_full"] > 0
    # Every record is queued, on the wire (one batch at most) or counted as dropped.
    assert shipper.dropped + shipper.queue_depth >= 1001 - 10
    started = time.perf_counter()
    shipper.close(timeout=0.3)
    assert time.perf_counter() - started < 1.5


def test_close_delivers_what_is_queued_within_the_bound(
    collector: LogCollectorDouble, make_shipper: ShipperFactory
) -> None:
    shipper, logger = make_shipper(batch_size=20, flush_interval=60)
    for i in range(50):
        logger.info("queued %d", i)
    started = time.perf_counter()
    shipper.close(timeout=3)

    assert time.perf_counter() - started < 3
    assert [i["body"] for i in collector.accepted] == [f"queued {i}" for i in range(50)]
    assert collector.requests == 3  # 20 + 20 + 10
    assert shipper.dropped == 0
    assert shipper not in logger.handlers
    logger.info("after close")  # goes nowhere, raises nothing
    assert shipper.queue_depth == 0


def test_close_is_bounded_when_the_collector_hangs(collector: LogCollectorDouble, make_shipper: ShipperFactory) -> None:
    collector.server.blackhole = True
    shipper, logger = make_shipper(batch_size=2, flush_interval=60, read_timeout=0.3, max_tries=2)
    for i in range(5):
        logger.info("stuck %d", i)
    started = time.perf_counter()
    shipper.close(timeout=0.3)

    assert time.perf_counter() - started < 1.0
    # The batch on the wire fails once its attempts time out; everything else was counted at close.
    wait_for(lambda: shipper.dropped == 5, timeout=5)
    assert shipper.sent == 0


def test_secrets_are_never_shipped(collector: LogCollectorDouble, make_shipper: ShipperFactory) -> None:
    shipper, logger = make_shipper()
    secrets = ["hunter2-pw", "tok-3f9a", "share-7c1d", "eyJhbGciOiJIUzI1NiJ9.e30.sig", "deadbeefcafe", "tempsig0123"]
    logger.info(
        "GET https://cdn.example/p.jpg?token=exp=1~hmac=deadbeefcafe with Authorization: Bearer %s",
        "eyJhbGciOiJIUzI1NiJ9.e30.sig",
        extra={"password": "hunter2-pw", "token": "tok-3f9a", "share_token": "share-7c1d", "photo_id": 3},
    )
    try:
        raise RuntimeError("PUT /v1/AUTH_x/c/o?temp_url_sig=tempsig0123&temp_url_expires=1 failed")
    except RuntimeError:
        logger.exception('upload failed {"password": "hunter2-pw"}')
    assert shipper.drain(5)

    shipped = b"".join(collector.bodies).decode()
    assert len(collector.accepted) == 2
    for secret in secrets:
        assert secret not in shipped
    assert "photo_id" in shipped and "[REDACTED]" in shipped


def test_the_shippers_own_logs_are_not_fed_back(
    collector: LogCollectorDouble, make_shipper: ShipperFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # resilience "retrying" lines and urllib3 debug lines are emitted
    shipper, _ = make_shipper(max_tries=3)
    root = logging.getLogger()
    shipper.install(root)  # on the root logger, where the worker's own lines also arrive
    collector.http_failures = [500]
    logging.getLogger("test.app").info("from the app")
    assert shipper.drain(5)
    time.sleep(0.2)

    assert [i["body"] for i in collector.accepted] == ["from the app"]
    assert any(r.getMessage() == "retrying" for r in caplog.records)  # the line exists, it just is not shipped


def test_under_gevent_the_worker_is_a_greenlet_and_emitting_never_waits(collector: LogCollectorDouble) -> None:
    collector.server.blackhole = True
    url = f"{collector.server.url}/v2/log"
    script = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import json, logging, time
        import gevent
        from photo_api.clients.logcrash import LogShipper
        from photo_api.resilience import Policy, Resilient
        policy = Policy(service="log", connect_timeout=0.5, read_timeout=0.5, deadline=1, max_tries=1, max_time=1,
                        base_delay=0, max_delay=0, failure_threshold=5, recovery_timeout=30)
        shipper = LogShipper(url={url!r}, appkey="k", project_version="1", host="h", resilient=Resilient(policy),
                             queue_size=100, batch_size=10, flush_interval=0.01)
        logger = logging.getLogger("g"); logger.propagate = False; logger.setLevel(logging.INFO)
        shipper.install(logger)
        logger.info("warm-up"); gevent.sleep(0.05)
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
        t0 = time.perf_counter()
        for i in range(1000):
            logger.info("r %d", i)
        emit_s = time.perf_counter() - t0
        ticker.join(2)
        t0 = time.perf_counter(); shipper.close(timeout=0.2); close_s = time.perf_counter() - t0
        print(json.dumps({{"greenlet": isinstance(shipper._worker.runner, gevent.Greenlet), "emit_s": emit_s,
                          "close_s": close_s, "ticks": len(ticks), "full": shipper.dropped_by_reason["queue_full"],
                          "dropped": shipper.dropped, "sent": shipper.sent}}))
        """
    )
    out = subprocess.run(python_child(script), capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["greenlet"] is True
    assert result["emit_s"] < 0.1
    assert result["close_s"] < 1.0
    assert result["ticks"] == 10  # the event loop kept running while the collector hung
    assert result["full"] >= 1000 - 100 - 10
    assert (result["dropped"], result["sent"]) == (1001, 0)  # every record accounted for, none lost silently


def test_shipper_from_settings(collector: LogCollectorDouble) -> None:
    assert build_log_shipper(load_settings(environ={})) is None
    settings = load_settings(
        environ={},
        nhn_log_appkey=APPKEY,
        nhn_log_url=f"{collector.server.url}/v2/log",
        log_queue_size=50,
        log_batch_size=5,
        log_flush_interval=0.05,
        app_version="2.0.0+abc",
        instance_ip="10.1.2.3",
    )
    shipper = build_log_shipper(settings, context=lambda: {"request_id": "r"})
    assert shipper is not None
    assert (shipper.queue_size, shipper.batch_size, shipper.flush_interval) == (50, 5, 0.05)
    logger = logging.getLogger("test.logcrash.settings")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    shipper.install(logger)
    try:
        logger.info("wired")
        assert shipper.drain(5)
    finally:
        shipper.close(timeout=0.5)
    item = collector.accepted[0]
    assert (item["projectVersion"], item["host"], item["request_id"]) == ("2.0.0_abc", "10.1.2.3", "r")


def test_a_line_logged_during_a_request_carries_the_requests_fields(
    collector: LogCollectorDouble, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(
        nhn_log_appkey=APPKEY, nhn_log_url=f"{collector.server.url}/v2/log", log_level="INFO", log_flush_interval=0.05
    )
    app = create_app(settings)
    runtime = collaborators_of(app)
    assert runtime.log_shipper is not None
    try:
        r = app.test_client().get("/auth/me", headers={"X-Request-ID": "req-lnc-1"})
        assert r.status_code == 401
        assert runtime.log_shipper.drain(5)
    finally:
        runtime.log_shipper.close(timeout=1)
        runtime.db.dispose()

    # The access line is logged by the request's own hook, as the stdout line is.
    (access,) = [i for i in collector.accepted if i["body"] == "request"]
    assert (access["request_id"], access["method"], access["endpoint"]) == ("req-lnc-1", "GET", "/auth/me")
    assert access["status"] == "401"
