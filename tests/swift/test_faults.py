"""SwiftStorage behind a fault proxy: retries, the breaker, deadlines and the bulkhead, on a real Swift."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, BinaryIO, cast

import pytest

from photo_api.resilience import Bulkhead
from photo_api.storage import ObjectNotFoundError, StorageError, StorageUnavailableError, SwiftStorage
from tests import python_child
from tests.harness.faultproxy import Fault, FaultProxy
from tests.storage_contract import GeneratedStream, pseudo_random_chunks
from tests.swift.conftest import Clock, MakeStorage, Recorder, Swift, fast_policy
from tests.swift.keystone_double import QuietHTTPServer

pytestmark = pytest.mark.slow

# An open breaker answers without I/O; anything near a network round trip would mean it did not.
FAIL_FAST_S = 0.05
RECOVERY_S = 30.0


@pytest.fixture
def key() -> str:
    return f"faults/{secrets.token_hex(8)}/photo.png"


@pytest.fixture
def events() -> Recorder:
    return Recorder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def behind_proxy(
    make_storage: MakeStorage, swift: Swift, swift_proxy: FaultProxy, events: Recorder, clock: Clock
) -> Callable[..., SwiftStorage]:
    """SwiftStorage whose object calls go through the fault proxy (auth goes straight to Swift)."""

    def make(**overrides: Any) -> SwiftStorage:
        values: dict[str, Any] = {
            "storage_url": f"{swift_proxy.url}/v1/{swift.account}",
            "events": events,
            "clock": clock,
        }
        values.update(overrides)
        return make_storage(**values)

    return make


@pytest.fixture
def stored(behind_proxy: Callable[..., SwiftStorage], key: str) -> tuple[SwiftStorage, str]:
    """A storage behind the proxy with one object already stored under `key`."""
    storage = behind_proxy(policy=fast_policy(failure_threshold=3, recovery_timeout=RECOVERY_S))
    storage.put(key, io.BytesIO(b"stored bytes"), content_type="image/png")
    return storage, key


def elapsed(fn: Callable[[], object]) -> tuple[float, BaseException | None]:
    """How long `fn` took, and what it raised."""
    started = time.monotonic()
    try:
        fn()
    except BaseException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


# ---------------------------------------------------------------------- retries


def test_a_503_burst_is_recovered_by_retries(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, events: Recorder
) -> None:
    storage, key = stored
    swift_proxy.set(Fault.http_error(503, count=2))
    before = swift_proxy.connections
    assert storage.head(key).size == len(b"stored bytes")
    assert swift_proxy.connections - before == 3
    assert len(events.retries) == 2
    assert storage.breaker_state == "closed"


def test_connection_resets_are_recovered_by_retries(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, events: Recorder
) -> None:
    storage, key = stored
    swift_proxy.set(Fault.reset(count=2))
    with storage.open(key) as reader:
        assert b"".join(reader) == b"stored bytes"
    assert len(events.retries) == 2


def test_retry_after_of_a_429_is_honoured(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, events: Recorder
) -> None:
    storage, key = stored
    swift_proxy.set(Fault.http_error(429, count=1, retry_after=1))
    took, error = elapsed(lambda: storage.delete(key))
    assert error is None
    assert events.retries == [("storage", 1.0)]
    assert took >= 1.0
    with pytest.raises(ObjectNotFoundError):
        storage.head(key)


def test_a_seekable_upload_is_retried_and_a_stream_is_not(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, key: str
) -> None:
    storage, _ = stored
    data = secrets.token_bytes(100_000)
    source = io.BytesIO(b"prefix" + data)
    source.seek(len(b"prefix"))  # rewound to where it started, not to 0
    swift_proxy.set(Fault.http_error(503, count=1))
    before = swift_proxy.connections
    assert storage.put(key, source, content_type="image/png").size == len(data)
    assert swift_proxy.connections - before == 2
    with storage.open(key) as reader:
        assert b"".join(reader) == data

    other = key + ".stream"
    stream = GeneratedStream(pseudo_random_chunks(100_000))
    swift_proxy.set(Fault.http_error(503, count=1))
    before = swift_proxy.connections
    with pytest.raises(StorageUnavailableError):
        storage.put(other, cast(BinaryIO, stream), content_type="image/png")
    assert swift_proxy.connections - before == 1, "a consumed stream cannot be sent again"
    with pytest.raises(ObjectNotFoundError):
        storage.head(other)


def test_client_errors_are_not_retried(stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy) -> None:
    storage, key = stored
    swift_proxy.set(Fault.http_error(409, count=1))
    before = swift_proxy.connections
    with pytest.raises(StorageError) as caught:
        storage.head(key)
    assert not isinstance(caught.value, StorageUnavailableError)
    assert swift_proxy.connections - before == 1
    assert storage.breaker_state == "closed"


# ---------------------------------------------------------------------- breaker


def open_the_breaker(storage: SwiftStorage, key: str, proxy: FaultProxy) -> None:
    proxy.set(Fault.reset())
    with pytest.raises(StorageUnavailableError):
        storage.head(key)  # three tries, three failures: the threshold
    assert storage.breaker_state == "open"


def test_open_breaker_fails_fast_without_touching_the_network(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, events: Recorder
) -> None:
    storage, key = stored
    open_the_breaker(storage, key, swift_proxy)
    seen = swift_proxy.connections
    for call in (lambda: storage.head(key), lambda: storage.open(key), lambda: storage.delete(key)):
        took, error = elapsed(call)
        assert isinstance(error, StorageUnavailableError)
        assert 1 <= (error.retry_after or 0) <= RECOVERY_S
        assert took < FAIL_FAST_S
    took, error = elapsed(lambda: storage.put(key + ".new", io.BytesIO(b"x"), content_type="image/png"))
    assert isinstance(error, StorageUnavailableError) and took < FAIL_FAST_S
    assert swift_proxy.connections == seen, "an open breaker must not open connections"
    assert ("storage", "closed", "open") in events.states


def test_half_open_admits_one_trial_and_its_success_closes(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, clock: Clock
) -> None:
    storage, key = stored
    open_the_breaker(storage, key, swift_proxy)
    clock.advance(RECOVERY_S + 1)
    assert storage.breaker_state == "half_open"
    swift_proxy.set(Fault.latency(300))  # Swift is back, slowly: the trial is in flight for a while
    seen = swift_proxy.connections
    trial: list[object] = []
    thread = threading.Thread(target=lambda: trial.append(storage.head(key).size))
    thread.start()
    while swift_proxy.connections == seen:
        time.sleep(0.01)
    took, error = elapsed(lambda: storage.head(key))
    assert isinstance(error, StorageUnavailableError) and took < FAIL_FAST_S  # a second caller is turned away
    thread.join(10)
    assert trial == [len(b"stored bytes")]
    assert swift_proxy.connections == seen + 1
    assert storage.breaker_state == "closed"
    assert storage.head(key).size == len(b"stored bytes")


def test_a_failed_trial_opens_the_breaker_again(
    stored: tuple[SwiftStorage, str], swift_proxy: FaultProxy, clock: Clock
) -> None:
    storage, key = stored
    open_the_breaker(storage, key, swift_proxy)
    clock.advance(RECOVERY_S + 1)
    seen = swift_proxy.connections
    with pytest.raises(StorageUnavailableError):
        storage.head(key)
    assert swift_proxy.connections == seen + 1  # one trial, not a retry sequence
    assert storage.breaker_state == "open"


class StalledSource:
    """An upload source (a client) that sends a little and then stops, as the API's body reader reports it."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > 2:
            raise TimeoutError("the client sent nothing for CLIENT_BODY_TIMEOUT seconds")
        return b"x" * size


def test_a_stalled_source_neither_counts_nor_resets_the_failures_before_it(
    behind_proxy: Callable[..., SwiftStorage], swift_proxy: FaultProxy, key: str
) -> None:
    storage = behind_proxy(policy=fast_policy(failure_threshold=3, max_tries=1, recovery_timeout=RECOVERY_S))
    storage.put(key, io.BytesIO(b"warm"), content_type="image/png")  # token and container before the faults
    swift_proxy.set(Fault.reset(count=2))
    for _ in range(2):
        with pytest.raises(StorageUnavailableError):
            storage.head(key)
    assert storage.breaker_state == "closed"  # two failures of three
    opened = swift_proxy.connections
    with pytest.raises(TimeoutError, match="CLIENT_BODY_TIMEOUT"):
        storage.put(key + ".stalled", cast(BinaryIO, StalledSource()), content_type="image/png")
    assert storage.breaker_state == "closed"
    # The PUT's connection (a new one: the resets emptied the pool) may still wait in the proxy's accept
    # queue; accepted after the switch below, it would take the one reset meant for the HEAD.
    swift_proxy.wait_for_connections(more_than=opened)
    swift_proxy.set(Fault.reset(count=1))
    with pytest.raises(StorageUnavailableError):
        storage.head(key)
    assert storage.breaker_state == "open", "the stalled client must not have reset the two failures before it"
    swift_proxy.pass_through()
    with pytest.raises(StorageUnavailableError):
        storage.head(key)  # refused without I/O until the recovery timeout


# ---------------------------------------------------------------------- deadlines and bulkhead


def test_blackholed_swift_is_bounded_by_the_read_timeout(
    behind_proxy: Callable[..., SwiftStorage], swift_proxy: FaultProxy, key: str
) -> None:
    # Outside gevent nothing can interrupt a blocking read, so the bound is tries x read timeout
    # (plus backoff sleeps): 2 x 0.4 s here.
    storage = behind_proxy(policy=fast_policy(read_timeout=0.4, max_tries=2, max_time=1.0))
    storage.check()  # authenticated while Swift still answers
    swift_proxy.set(Fault.blackhole())
    for call in (lambda: storage.head(key), lambda: storage.open(key)):
        took, error = elapsed(call)
        assert isinstance(error, StorageUnavailableError)
        assert 0.8 <= took < 1.5


def test_health_check_gets_one_attempt_within_its_timeout(
    behind_proxy: Callable[..., SwiftStorage], swift_proxy: FaultProxy
) -> None:
    storage = behind_proxy(check_timeout=0.3)
    storage.check()
    swift_proxy.set(Fault.blackhole())
    before = swift_proxy.connections
    took, error = elapsed(storage.check)
    assert isinstance(error, StorageUnavailableError)
    assert 0.3 <= took < 0.8
    assert swift_proxy.connections - before == 1


GEVENT_DEADLINE = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import json, sys, time
    from photo_api.resilience import Bulkhead
    from photo_api.storage import StorageUnavailableError, SwiftStorage
    from tests.swift.conftest import fast_policy
    auth_url, user, password, storage_url, container, key = sys.argv[1:7]
    # A read timeout far beyond the deadline: only the deadline can end these calls early.
    storage = SwiftStorage(auth_url=auth_url, auth_version="1", username=user, password=password,
                           storage_url=storage_url, container=container, upload_timeout=30, check_timeout=2,
                           bulkhead=Bulkhead(20, 0.5), policy=fast_policy(read_timeout=30, deadline=0.5),
                           auth_policy=fast_policy("storage_auth"))
    storage._tokens.token()   # authenticate up front (auth goes straight to Swift anyway)
    print("ready", flush=True)
    sys.stdin.readline()      # the test blackholes the proxy now
    results = {}
    for name, call in (("head", lambda: storage.head(key)), ("open", lambda: storage.open(key))):
        started = time.monotonic()
        try:
            call()
            results[name] = ["no error", time.monotonic() - started]
        except StorageUnavailableError as exc:
            results[name] = [str(exc), time.monotonic() - started]
    print(json.dumps(results), flush=True)
    """
)


def test_blackholed_swift_is_cut_at_the_deadline_under_gevent(
    swift: Swift, swift_proxy: FaultProxy, container: str, key: str
) -> None:
    args = [swift.auth_url, swift.user, swift.key, f"{swift_proxy.url}/v1/{swift.account}", container, key]
    with subprocess.Popen(
        [*python_child(GEVENT_DEADLINE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().strip() == "ready"
            swift_proxy.set(Fault.blackhole())
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 0, err
    results = json.loads(out.strip().splitlines()[-1])
    for name in ("head", "open"):
        message, took = results[name]
        assert "deadline" in message, results
        assert 0.45 <= took < 1.0, results


def test_bulkhead_bounds_concurrent_calls(
    behind_proxy: Callable[..., SwiftStorage], swift_proxy: FaultProxy, key: str
) -> None:
    storage = behind_proxy(policy=fast_policy(read_timeout=1.0, max_tries=1), bulkhead=Bulkhead(2, 0.1))
    storage.check()
    swift_proxy.set(Fault.blackhole())
    before = swift_proxy.connections
    outcomes: list[BaseException | None] = []
    stuck = [threading.Thread(target=lambda: outcomes.append(elapsed(lambda: storage.head(key))[1])) for _ in range(2)]
    for t in stuck:
        t.start()
    while swift_proxy.connections < before + 2:  # both calls hold a slot and hang in the blackhole
        time.sleep(0.01)
    seen = swift_proxy.connections
    took, error = elapsed(lambda: storage.head(key))
    assert isinstance(error, StorageUnavailableError) and "too many" in str(error)
    assert 0.1 <= took < 0.3
    assert swift_proxy.connections == seen
    for t in stuck:
        t.join(5)
    assert [type(e) for e in outcomes] == [StorageUnavailableError, StorageUnavailableError]  # their read timeouts
    swift_proxy.pass_through()
    with pytest.raises(ObjectNotFoundError):
        storage.head(key)  # slots were given back


# ---------------------------------------------------------------------- ETag check


class _CorruptingSwift:
    """A Swift front that stores nothing and answers every PUT with a wrong ETag; records DELETEs."""

    WRONG_ETAG = "0" * 32

    def __init__(self) -> None:
        self.deletes: list[str] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:  # the container exists
                self._reply(204)

            def do_PUT(self) -> None:
                while True:  # consume the chunked body
                    size = int(self.rfile.readline().strip(), 16)
                    self.rfile.read(size + 2)
                    if size == 0:
                        break
                self._reply(201, {"Etag": front.WRONG_ETAG, "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"})

            def do_DELETE(self) -> None:
                front.deletes.append(self.path)
                self._reply(204)

            def _reply(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/AUTH_test"


@pytest.fixture
def corrupting() -> Iterator[_CorruptingSwift]:
    front = _CorruptingSwift()
    front.thread.start()
    yield front
    front.server.shutdown()
    front.server.server_close()


def test_etag_mismatch_deletes_the_object_and_fails(
    make_storage: MakeStorage, corrupting: _CorruptingSwift, key: str
) -> None:
    storage = make_storage(storage_url=corrupting.url)
    with pytest.raises(StorageError, match="ETag mismatch"):
        storage.put(key, io.BytesIO(b"some bytes"), content_type="image/png")
    assert len(corrupting.deletes) == 1 and corrupting.deletes[0].endswith("/photo.png")
