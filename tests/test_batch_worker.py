"""The log shipper's background worker on its own: batches, drain, close, and that every item is accounted for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from photo_api.logs.worker import BatchWorker


class Sink:
    """A `send` that records its batches; `hold` makes it wait until released, as a hung collector does."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.fail_next = False

    def __call__(self, batch: list[int]) -> None:
        self.entered.set()
        self.hold.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("send broke")
        self.batches.append(batch)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.hold.set()  # never leave a worker thread waiting after the test


def worker(sink: Sink, **overrides: float) -> BatchWorker[int]:
    options = {"queue_size": 100, "batch_size": 10, "flush_interval": 60.0, **overrides}
    w: BatchWorker[int] = BatchWorker(
        sink,
        name="test-worker",
        queue_size=int(options["queue_size"]),
        batch_size=int(options["batch_size"]),
        flush_interval=options["flush_interval"],
    )
    w.start(green=False)
    return w


def test_full_batches_go_at_once_and_drain_sends_the_rest(sink: Sink) -> None:
    w = worker(sink)
    for i in range(25):
        assert w.put(i)
    assert w.drain(5)
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    assert [i for b in sink.batches for i in b] == list(range(25))
    assert w.depth == 0 and not w.dropped_by_reason
    w.close(1)


def test_a_partial_batch_waits_for_the_flush_interval_from_its_oldest_item(sink: Sink) -> None:
    w = worker(sink, flush_interval=0.5)
    started = time.monotonic()
    w.put(1)
    time.sleep(0.4)
    w.put(2)  # does not restart the wait, which would send at 0.9 s
    while not sink.batches:
        assert time.monotonic() - started < 5
        time.sleep(0.01)
    assert 0.49 <= time.monotonic() - started < 0.85
    assert sink.batches == [[1, 2]]
    w.close(1)


def test_a_send_that_raises_drops_its_batch_and_the_worker_goes_on(sink: Sink) -> None:
    w = worker(sink)
    sink.fail_next = True
    w.put(1)
    assert w.drain(5)
    w.put(2)
    assert w.drain(5)
    assert sink.batches == [[2]]
    assert w.dropped_by_reason == {"error": 1}
    w.close(1)


def test_a_full_queue_drops_the_new_item(sink: Sink) -> None:
    sink.hold.clear()
    w = worker(sink, queue_size=5, batch_size=1)
    w.put(0)
    assert sink.entered.wait(5)  # 0 is on the wire
    assert all(w.put(i) for i in range(1, 6))
    assert w.full() and not w.put(6)
    assert w.depth == 5 and w.dropped_by_reason == {"queue_full": 1}
    sink.hold.set()
    assert w.drain(5)
    assert [b[0] for b in sink.batches] == [0, 1, 2, 3, 4, 5]
    w.close(1)


def test_close_with_a_hung_send_is_bounded_and_counts_what_is_left(sink: Sink) -> None:
    sink.hold.clear()
    w = worker(sink, batch_size=2)
    for i in range(5):
        w.put(i)
    assert sink.entered.wait(5)
    started = time.monotonic()
    assert not w.drain(0.1)
    assert w.depth == 3  # the drain's marker is not an item
    w.close(0.1)
    assert time.monotonic() - started < 1
    assert w.closed and w.depth == 0
    assert w.dropped_by_reason == {"shutdown": 3}
    sink.hold.set()  # the batch on the wire completes: it was sent, not dropped
    w.runner.join(5)
    assert sink.batches == [[0, 1]]
    assert w.dropped_by_reason == {"shutdown": 3}


def test_drain_without_a_worker(sink: Sink) -> None:
    w: BatchWorker[int] = BatchWorker(sink, name="idle", queue_size=10, batch_size=10, flush_interval=1)
    assert w.drain(0.1)  # nothing queued
    w.put(1)
    assert not w.drain(0.1)  # nobody to send it
    w.close(0.1)
    assert w.dropped_by_reason == {"shutdown": 1}
