"""Ship log records to NHN Cloud Log & Crash Search without ever making a request wait on the network.

`LogShipper` is a `logging.Handler` tying three parts together: the item format (`logs.logcrash`:
what a record becomes, secrets removed), a bounded queue drained by one background worker per
process (`logs.worker`: when the queue is full the record is dropped and counted, emitting never
blocks), and the transport here: JSON arrays of up to `batch_size` items POSTed through `Resilient`
(the "log" policy), so transient failures are retried with backoff; a batch that still fails, or
that meets an open circuit, is dropped and counted. Items the collector rejects (per-item
``resultList`` failures: wrong project, bad key, …) are dropped and counted, never resent. Delivery
is at-least-once: a retry after a read timeout may duplicate a batch.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import requests

from ..greenlets import is_green
from ..logs import ContextProvider
from ..logs.logcrash import CapturedRecord, LogCrashFormat
from ..logs.worker import DEFAULT_DRAIN_TIMEOUT_S, BatchWorker
from ..resilience import DependencyUnavailableError, Resilient, TransientError, raise_for_transient

log = logging.getLogger(__name__)

# Limits of the collection API: an item over 8 MB is refused, and a request stays under 52 MB with
# room for the array brackets.
MAX_ITEM_BYTES = 8_388_608
MAX_REQUEST_BYTES = 50 * 1024 * 1024


class LogRejectedError(Exception):
    """The collector refused a whole request for a reason a retry will not fix (4xx, isSuccessful=false)."""


class LogCollector:
    """The collection API: POST a JSON array of items, get each item's result."""

    def __init__(self, url: str, resilient: Resilient, session: requests.Session | None = None):
        self.url = url
        self.resilient = resilient
        self._session = session or requests.Session()

    def send(self, items: list[str]) -> list[tuple[bool, str]]:
        """POST serialised items as one array through the "log" policy; the per-item (ok, message) results.

        Raises DependencyUnavailableError when retries are exhausted or the circuit is open, and LogRejectedError
        when the collector refuses the request as a whole.
        """
        return self.resilient.call(self._post, items, idempotent=True, operation="ship")

    def _post(self, items: list[str]) -> list[tuple[bool, str]]:
        response = self._session.post(
            self.url,
            data=("[" + ",".join(items) + "]").encode(),
            headers={"Content-Type": "application/json"},
            timeout=self.resilient.policy.timeout,
        )
        raise_for_transient(response)
        if response.status_code != 200:
            raise LogRejectedError(f"HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            raise TransientError("log collector answered 200 without JSON", status=200) from None
        header = payload.get("header") if isinstance(payload, dict) else None
        if not isinstance(header, dict) or header.get("isSuccessful") is not True:
            message = header.get("resultMessage") if isinstance(header, dict) else "no header"
            raise LogRejectedError(str(message))
        data = (payload.get("body") or {}).get("data") if isinstance(payload.get("body"), dict) else None
        results = data.get("resultList") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            # A successful header without per-item results: the collector took the batch as a whole.
            return [(True, "")] * len(items)
        return [
            (r.get("isSuccessful") is True, str(r.get("resultMessage", ""))) if isinstance(r, dict) else (False, "?")
            for r in results
        ]


class LogShipper(logging.Handler):
    """A logging handler that queues records (never blocking) and ships them to Log & Crash in the background."""

    def __init__(
        self,
        *,
        url: str,
        appkey: str,
        project_version: str,
        host: str,
        resilient: Resilient,
        session: requests.Session | None = None,
        queue_size: int = 10_000,
        batch_size: int = 100,
        flush_interval: float = 2.0,
        level: int | str = logging.INFO,
        context: ContextProvider | None = None,
        static_fields: Mapping[str, Any] | None = None,
        on_dropped: Callable[[str, int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ):
        super().__init__(level)
        self.resilient = resilient
        self._format = LogCrashFormat(
            appkey=appkey, project_version=project_version, host=host, context=context, static_fields=static_fields
        )
        self._collector = LogCollector(url, resilient, session)
        self._on_depth = on_depth
        self._worker: BatchWorker[CapturedRecord] = BatchWorker(
            self._ship,
            name="log-shipper",
            queue_size=queue_size,
            batch_size=batch_size,
            flush_interval=flush_interval,
            on_dropped=on_dropped,
            on_batch=self._after_batch,
        )
        self._installed_on: logging.Logger | None = None
        self._reported_full = 0
        self.sent = 0  # written by the worker only

    @property
    def queue_size(self) -> int:
        """Records the queue holds at most."""
        return self._worker.queue_size

    @property
    def batch_size(self) -> int:
        """Records per request at most."""
        return self._worker.batch_size

    @property
    def flush_interval(self) -> float:
        """Seconds a record waits at most for its batch to fill."""
        return self._worker.flush_interval

    @property
    def dropped_by_reason(self) -> collections.Counter[str]:
        """Dropped records by reason: queue_full, unformattable, oversize, rejected, unavailable, error, shutdown."""
        return self._worker.dropped_by_reason

    @property
    def dropped(self) -> int:
        """Records that will never reach the collector: queue full, rejected, undeliverable, oversize, shutdown."""
        return sum(self.dropped_by_reason.values())

    @property
    def queue_depth(self) -> int:
        """Records waiting to be sent."""
        return self._worker.depth

    def createLock(self) -> None:
        """No handler-wide lock: emit synchronises itself and never waits, so nothing can stall a caller."""
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        """Queue `record` for shipping, or drop and count it when the queue is full; never blocks on I/O."""
        if self._worker.closed or self._worker.is_current():
            # The worker's own lines (retries, urllib3, give-ups) would feed back into the queue forever.
            return
        if self._worker.full():  # checked first, so a dead collector makes drops cheap
            self._worker.drop("queue_full")
            return
        try:
            captured = self._format.capture(record)
        except Exception:
            self._worker.drop("unformattable")
            self.handleError(record)
            return
        self._worker.put(captured)

    def install(self, logger: logging.Logger) -> None:
        """Attach to `logger` (replacing and closing an earlier LogShipper there) and start the worker."""
        for handler in list(logger.handlers):
            if isinstance(handler, LogShipper) and handler is not self:
                handler.close()
        logger.addHandler(self)
        self._installed_on = logger
        self.start()

    def start(self) -> None:
        """Start the background worker (a greenlet under gevent, else a daemon thread); idempotent."""
        self._worker.start(green=is_green())

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait for it, at most `timeout` seconds (logging.Handler's hook)."""
        self.drain(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Send everything queued now; wait at most `timeout` seconds. True when the queue was drained."""
        return self._worker.drain(timeout)

    def close(self, timeout: float | None = DEFAULT_DRAIN_TIMEOUT_S) -> None:
        """Flush within `timeout`, count what is left as dropped, stop the worker and detach; idempotent."""
        if self._worker.closed:
            return
        self._worker.close(timeout)
        if self._installed_on is not None:
            self._installed_on.removeHandler(self)
            self._installed_on = None
        super().close()

    def _after_batch(self, depth: int) -> None:
        full = self.dropped_by_reason["queue_full"]
        if full > self._reported_full:
            log.warning("log queue full: records dropped", extra={"dropped": full - self._reported_full})
            self._reported_full = full
        if self._on_depth is not None:
            self._on_depth(depth)

    def _ship(self, batch: list[CapturedRecord]) -> None:
        for chunk in self._chunks(batch):
            try:
                results = self._collector.send(chunk)
            except DependencyUnavailableError as exc:
                self._worker.drop("unavailable", len(chunk))
                log.warning("log collector unavailable: batch dropped", extra={"count": len(chunk), "why": exc.reason})
                continue
            except LogRejectedError as exc:
                self._worker.drop("rejected", len(chunk))
                log.error("log collector refused a batch", extra={"count": len(chunk), "why": str(exc)})
                continue
            failures = [message for ok, message in results if not ok]
            self.sent += len(results) - len(failures)
            if failures:
                self._worker.drop("rejected", len(failures))
                # One line per distinct reason, not one per item.
                for message, n in collections.Counter(failures).items():
                    log.error("log collector rejected items", extra={"count": n, "why": message})

    def _chunks(self, batch: Iterable[CapturedRecord]) -> Iterator[list[str]]:
        """Serialised items grouped under the per-request limit; oversize items dropped and counted."""
        chunk: list[str] = []
        size = 2
        for captured in batch:
            try:
                encoded = self._format.encode(captured)
            except Exception:
                self._worker.drop("unformattable")
                log.exception("log record could not be encoded; dropped")
                continue
            n = len(encoded.encode())
            if n > MAX_ITEM_BYTES:
                self._worker.drop("oversize")
                continue
            if chunk and size + n + 1 > MAX_REQUEST_BYTES:
                yield chunk
                chunk, size = [], 2
            chunk.append(encoded)
            size += n + 1
        if chunk:
            yield chunk
