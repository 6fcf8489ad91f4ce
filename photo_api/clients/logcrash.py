"""Ship log records to NHN Cloud Log & Crash Search without ever making a request wait on the network.

`LogShipper` is a `logging.Handler`. `emit` captures a record (message, traceback, request context)
into a bounded in-memory queue; when the queue is full the record is dropped and counted — it
never blocks. One background worker per process (a greenlet under gevent, else a daemon thread) sends
the queue as JSON arrays of up to `batch_size` items, at the latest `flush_interval` seconds after the
oldest queued record, through `Resilient` (the "log" policy): transient failures are retried with
backoff; a batch that still fails, or that meets an open circuit, is dropped and counted. Items the
collector rejects (per-item ``resultList`` failures: wrong project, bad key, …) are dropped and
counted, never resent. Delivery is at-least-once: a retry after a read timeout may duplicate a batch.

Item shape: ``projectName`` (appkey), ``projectVersion`` (sanitised to ``[A-Za-z0-9._-]``),
``logVersion`` "v2", ``body``, ``logSource`` "API", ``logType`` "log", ``host``, ``sendTime`` (Unix
seconds of the record's creation, as a string), ``logLevel`` (DEBUG/INFO/WARN/ERROR/FATAL),
``lncBulkIndex`` (a per-process sequence, so records keep their order), then flat custom keys — the
record's ``extra`` fields, the request context and static fields — renamed to satisfy the naming rule
(a letter first, then ``A-Za-z0-9-_``); values over 1 KB move to ``txt*`` keys, the traceback goes to
``txtException``. Fields named like secrets (logs.FORBIDDEN_FIELDS) are never shipped, and values that
look like credentials (``token=…``, ``Bearer …``, TempURL signatures) are redacted in every text field.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from ..greenlets import is_green
from ..logs import FORBIDDEN_FIELDS, ContextProvider
from ..resilience import DependencyUnavailable, Resilient, TransientError, raise_for_transient

log = logging.getLogger(__name__)

LOG_VERSION = "v2"
LOG_SOURCE = "API"
LOG_TYPE = "log"
# Names the collector gives a meaning to; a custom field may not reuse them (docs/nhn-cloud.md).
BASIC_FIELDS = frozenset(
    {
        "projectName",
        "projectVersion",
        "logVersion",
        "body",
        "logSource",
        "logType",
        "host",
        "sendTime",
        "logLevel",
        "logTime",
        "lncBulkIndex",
        "UserBinaryData",
        "UserTxtData",
    }
)
_BASIC_LOWER = frozenset(name.lower() for name in BASIC_FIELDS)
# Limits of the collection API. Text fields are cut below 1 MB so they stay searchable; a request
# stays under 52 MB with room for the array brackets.
MAX_TEXT_BYTES = 1_000_000
MAX_CUSTOM_VALUE_BYTES = 1024
MAX_ITEM_BYTES = 8_388_608
MAX_REQUEST_BYTES = 50 * 1024 * 1024
TRUNCATED_MARK = "…[truncated]"
DEFAULT_CLOSE_TIMEOUT_S = 5.0
WORKER_JOIN_TIMEOUT_S = 1.0

LEVEL_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
}
# Attributes every LogRecord has; the rest came through `extra=` (same rule as logs.JsonFormatter).
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_CUSTOM_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_INVALID_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_VERSION_INVALID = re.compile(r"[^A-Za-z0-9._-]")
# Credentials that can hide inside messages and exception texts (URLs, headers, JSON bodies).
_REDACTIONS = (
    (
        re.compile(
            r"(?i)\b(token|access_token|refresh_token|temp_url_sig|signature|sig|hmac|password|passwd|secret|"
            r"secret_key|encryptkey|authorization)=[^&\s\"'<>]+"
        ),
        r"\1=[REDACTED]",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    (
        re.compile(
            r"(?i)([\"'](?:password|token|access_token|secret|secret_key|encryptKey|authorization|x-auth-token)"
            r"[\"']\s*:\s*)[\"'][^\"']*[\"']"
        ),
        r'\1"[REDACTED]"',
    ),
    (re.compile(r"(?i)\b(x-auth-token|authorization)(\s*:\s*)[^\s,;'\"}]+"), r"\1\2[REDACTED]"),
)


def sanitise_version(version: str) -> str:
    """`version` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (projectVersion rule)."""
    return _VERSION_INVALID.sub("_", version) or "0"


def redact(text: str) -> str:
    """`text` with credential-looking values replaced by ``[REDACTED]``."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def is_forbidden_field(name: str) -> bool:
    """True for field names that may carry a secret (password, token, authorization, …)."""
    lowered = name.lower()
    return any(word in lowered for word in FORBIDDEN_FIELDS)


def custom_key(name: str) -> str:
    """A key valid as a Log & Crash custom field: a letter first, then ``A-Za-z0-9-_``, not a basic field."""
    key = _INVALID_KEY_CHARS.sub("_", name)
    if not _CUSTOM_KEY.match(key) or key.lower() in _BASIC_LOWER:
        key = "x" + key
    return key


def _cut(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len(TRUNCATED_MARK.encode())].decode(errors="ignore") + TRUNCATED_MARK


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def custom_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """Flat custom fields from arbitrary context: secrets dropped, keys made valid, long values in ``txt*`` keys."""
    out: dict[str, str] = {}
    for name, value in values.items():
        if value is None or is_forbidden_field(name):
            continue
        key = custom_key(name)
        text = redact(_as_text(value))
        # `long*`/`double*` keys are typed numeric fields on the collector's side; keep text out of them.
        if key.startswith(("long", "double")):
            key = "x" + key
        if len(text.encode()) > MAX_CUSTOM_VALUE_BYTES and not key.startswith("txt"):
            key = "txt" + key[0].upper() + key[1:]
        out[key] = _cut(text, MAX_TEXT_BYTES)
    return out


@dataclass(frozen=True, slots=True)
class _Entry:
    """A record as captured on the request path, waiting in the queue."""

    created: float
    level: str
    message: str
    fields: dict[str, str]
    exception: str | None
    stack: str | None
    sequence: int


class LogRejected(Exception):
    """The collector refused a whole request for a reason a retry will not fix (4xx, isSuccessful=false)."""


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
        self.url = url
        self.appkey = appkey
        self.project_version = sanitise_version(project_version)
        self.host = host
        self.resilient = resilient
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._session = session or requests.Session()
        self._context = context
        self._static = custom_fields(static_fields or {})
        # Metric hooks (reason, count) and queue depth; the depth is reported by the worker after each batch.
        self._on_dropped = on_dropped
        self._on_depth = on_depth
        self._sequence = itertools.count(1)
        # One lock, two conditions: emitters only append and notify (never wait); the worker waits for
        # work; drain() waits for the worker to go idle. Nobody holds the lock across network I/O.
        self._mutex = threading.Lock()
        self._work = threading.Condition(self._mutex)
        self._idle = threading.Condition(self._mutex)
        self._items: collections.deque[_Entry] = collections.deque()
        self._oldest_at = 0.0
        self._in_flight = 0  # records taken by the worker and not yet accounted for
        self._flush_waiters = 0
        self._closing = False
        self._closed = False
        self._worker: Any = None  # threading.Thread or gevent.Greenlet
        self._worker_ident: int | None = None
        self._installed_on: logging.Logger | None = None
        self.sent = 0
        self.dropped_by_reason: collections.Counter[str] = collections.Counter()
        self._reported_full = 0

    @property
    def dropped(self) -> int:
        """Records that will never reach the collector: queue full, rejected, undeliverable, oversize, shutdown."""
        return sum(self.dropped_by_reason.values())

    @property
    def queue_depth(self) -> int:
        """Records waiting to be sent."""
        return len(self._items)

    def _drop(self, reason: str, count: int = 1) -> None:
        with self._mutex:
            self.dropped_by_reason[reason] += count
        if self._on_dropped is not None and count:
            self._on_dropped(reason, count)

    def createLock(self) -> None:
        """No handler-wide lock: emit synchronises itself and never waits, so nothing can stall a caller."""
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        """Queue `record` for shipping, or drop and count it when the queue is full; never blocks on I/O.

        Only what cannot wait is done here (the message, the traceback, the request context, values as
        text); key rules, redaction and size limits are applied by the worker, off the request path.
        """
        if self._closing or threading.get_ident() == self._worker_ident:
            # The worker's own lines (retries, urllib3, give-ups) would feed back into the queue forever.
            return
        if len(self._items) >= self.queue_size:  # checked first, so a dead collector makes drops cheap
            self._drop("queue_full")
            return
        try:
            entry = self._capture(record)
        except Exception:
            self._drop("unformattable")
            self.handleError(record)
            return
        with self._mutex:
            full = len(self._items) >= self.queue_size
            if not full:
                if not self._items:
                    self._oldest_at = time.monotonic()
                self._items.append(entry)
                if len(self._items) in (1, self.batch_size):
                    self._work.notify()
        if full:
            self._drop("queue_full")

    def _capture(self, record: logging.LogRecord) -> _Entry:
        fields: dict[str, str] = {"logger": record.name}
        if self._context is not None:
            fields.update((k, _as_text(v)) for k, v in self._context().items() if v is not None)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_") and value is not None:
                # Rendered now: the object may not be usable outside its request (a closed DB session).
                fields[key] = _as_text(value)
        exception = None
        if record.exc_info and record.exc_info[0] is not None:
            exception = "".join(traceback.format_exception(*record.exc_info))
        return _Entry(
            created=record.created,
            level=LEVEL_NAMES.get(record.levelno, record.levelname),
            message=record.getMessage(),
            fields=fields,
            exception=exception,
            stack=record.stack_info,
            sequence=next(self._sequence),
        )

    def _item(self, entry: _Entry) -> dict[str, Any]:
        """The Log & Crash item of a queued entry (the collector's fields, valid custom keys, secrets removed)."""
        item: dict[str, Any] = {
            "projectName": self.appkey,
            "projectVersion": self.project_version,
            "logVersion": LOG_VERSION,
            "body": _cut(redact(entry.message), MAX_TEXT_BYTES),
            "logSource": LOG_SOURCE,
            "logType": LOG_TYPE,
            "host": self.host,
            "sendTime": str(int(entry.created)),
            "logLevel": entry.level,
            "lncBulkIndex": entry.sequence,
            **self._static,
            **custom_fields(entry.fields),
        }
        if entry.exception:
            item["txtException"] = _cut(redact(entry.exception), MAX_TEXT_BYTES)
        if entry.stack:
            item["txtStack"] = _cut(redact(entry.stack), MAX_TEXT_BYTES)
        return item

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
        if self._worker is not None:
            return
        if is_green():
            import gevent

            self._worker = gevent.spawn(self._run)
        else:
            self._worker = threading.Thread(target=self._run, name="log-shipper", daemon=True)
            self._worker.start()

    def _worker_alive(self) -> bool:
        worker = self._worker
        if worker is None:
            return False
        if isinstance(worker, threading.Thread):
            return worker.is_alive()
        return not worker.dead

    def flush(self, timeout: float | None = None) -> None:
        """Send everything queued now and wait for it, at most `timeout` seconds (logging.Handler's hook)."""
        self.drain(timeout)

    def drain(self, timeout: float | None = None) -> bool:
        """Send everything queued now; wait at most `timeout` seconds. True when the queue was drained."""
        end = time.monotonic() + (timeout if timeout is not None else DEFAULT_CLOSE_TIMEOUT_S)
        with self._mutex:
            self._flush_waiters += 1
            self._work.notify()
            try:
                while self._items or self._in_flight:
                    remaining = end - time.monotonic()
                    if remaining <= 0 or not self._worker_alive():
                        return False
                    self._idle.wait(remaining)
                return True
            finally:
                self._flush_waiters -= 1

    def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Flush within `timeout`, count what is left as dropped, stop the worker and detach; idempotent."""
        if self._closed:
            return
        drained = self.drain(timeout)
        with self._mutex:
            self._closing = True
            self._closed = True
            left = len(self._items)
            self._items.clear()
            self._work.notify_all()
        self._drop("shutdown", left)
        worker = self._worker
        if isinstance(worker, threading.Thread):
            if drained:
                worker.join(WORKER_JOIN_TIMEOUT_S)  # idle, so it sees `_closing` at once
            # else it is stuck in a send: a daemon thread cannot be killed, and it ends with the process
        elif worker is not None:
            # A batch stuck on a blackholed collector must not outlive the worker; it is lost, so count it.
            worker.kill(block=False)
            with self._mutex:
                lost, self._in_flight = self._in_flight, 0
            self._drop("shutdown", lost)
        if self._installed_on is not None:
            self._installed_on.removeHandler(self)
            self._installed_on = None
        super().close()

    def _run(self) -> None:
        self._worker_ident = threading.get_ident()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._ship(batch)
            except Exception:
                self._drop("error", len(batch))
                log.exception("log shipping failed unexpectedly; batch dropped")
            finally:
                with self._mutex:
                    self._in_flight = 0
                    self._idle.notify_all()
            self._report_queue_drops()
            if self._on_depth is not None:
                self._on_depth(len(self._items))

    def _next_batch(self) -> list[_Entry] | None:
        """Wait until a batch is due (full, old enough, flush asked) and take it; None when closing."""
        with self._mutex:
            while True:
                if self._closing:
                    return None
                if self._items:
                    wait = self._oldest_at + self.flush_interval - time.monotonic()
                    if len(self._items) >= self.batch_size or self._flush_waiters or wait <= 0:
                        break
                    self._work.wait(wait)
                else:
                    self._work.wait()
            batch = [self._items.popleft() for _ in range(min(self.batch_size, len(self._items)))]
            self._in_flight = len(batch)
            if self._items:
                self._oldest_at = time.monotonic()
            return batch

    def _report_queue_drops(self) -> None:
        full = self.dropped_by_reason["queue_full"]
        if full > self._reported_full:
            log.warning("log queue full: records dropped", extra={"dropped": full - self._reported_full})
            self._reported_full = full

    def _ship(self, batch: list[_Entry]) -> None:
        for chunk in self._chunks(batch):
            try:
                results = self.resilient.call(self._post, chunk, idempotent=True, operation="ship")
            except DependencyUnavailable as exc:
                self._drop("unavailable", len(chunk))
                log.warning("log collector unavailable: batch dropped", extra={"count": len(chunk), "why": exc.reason})
                continue
            except LogRejected as exc:
                self._drop("rejected", len(chunk))
                log.error("log collector refused a batch", extra={"count": len(chunk), "why": str(exc)})
                continue
            failures = [message for ok, message in results if not ok]
            with self._mutex:
                self.sent += len(results) - len(failures)
            if failures:
                self._drop("rejected", len(failures))
                # One line per distinct reason, not one per item.
                for message, n in collections.Counter(failures).items():
                    log.error("log collector rejected items", extra={"count": n, "why": message})

    def _chunks(self, batch: Iterable[_Entry]) -> Iterator[list[str]]:
        """Serialised items grouped under the per-request limit; oversize items dropped and counted."""
        chunk: list[str] = []
        size = 2
        for entry in batch:
            try:
                encoded = json.dumps(self._item(entry), ensure_ascii=False, separators=(",", ":"), default=str)
            except Exception:
                self._drop("unformattable")
                log.exception("log record could not be encoded; dropped")
                continue
            n = len(encoded.encode())
            if n > MAX_ITEM_BYTES:
                self._drop("oversize")
                continue
            if chunk and size + n + 1 > MAX_REQUEST_BYTES:
                yield chunk
                chunk, size = [], 2
            chunk.append(encoded)
            size += n + 1
        if chunk:
            yield chunk

    def _post(self, chunk: list[str]) -> list[tuple[bool, str]]:
        """POST one JSON array; the per-item (ok, message) results in send order."""
        response = self._session.post(
            self.url,
            data=("[" + ",".join(chunk) + "]").encode(),
            headers={"Content-Type": "application/json"},
            timeout=self.resilient.policy.timeout,
        )
        raise_for_transient(response)
        if response.status_code != 200:
            raise LogRejected(f"HTTP {response.status_code}")
        try:
            payload = response.json()
        except ValueError:
            raise TransientError("log collector answered 200 without JSON", status=200) from None
        header = payload.get("header") if isinstance(payload, dict) else None
        if not isinstance(header, dict) or header.get("isSuccessful") is not True:
            message = header.get("resultMessage") if isinstance(header, dict) else "no header"
            raise LogRejected(str(message))
        data = (payload.get("body") or {}).get("data") if isinstance(payload.get("body"), dict) else None
        results = data.get("resultList") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            # A successful header without per-item results: the collector took the batch as a whole.
            return [(True, "")] * len(chunk)
        return [
            (r.get("isSuccessful") is True, str(r.get("resultMessage", ""))) if isinstance(r, dict) else (False, "?")
            for r in results
        ]
