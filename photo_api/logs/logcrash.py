"""The NHN Cloud Log & Crash Search item of a log record, with secrets removed (docs/nhn-cloud.md).

A record is captured on the request path (`LogCrashFormat.capture`: message, traceback, request
context, values as text; nothing more) and rendered off it (`item`, `encode`).

Item shape: ``projectName`` (appkey), ``projectVersion`` (sanitised to ``[A-Za-z0-9._-]``),
``logVersion`` "v2", ``body``, ``logSource`` "API", ``logType`` "log", ``host``, ``sendTime`` (Unix
seconds of the record's creation, as a string), ``logLevel`` (DEBUG/INFO/WARN/ERROR/FATAL),
``lncBulkIndex`` (a per-process sequence, so records keep their order), then flat custom keys — the
record's ``extra`` fields, the request context and static fields — renamed to satisfy the naming rule
(a letter first, then ``A-Za-z0-9-_``); values over 1 KB move to ``txt*`` keys, the traceback goes to
``txtException``. Fields named like secrets (FORBIDDEN_FIELDS) are never shipped, and values that
look like credentials (``token=…``, ``Bearer …``, TempURL signatures) are redacted in every text field.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import FORBIDDEN_FIELDS, RECORD_ATTRS, ContextProvider

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
# Text fields are cut below the collector's 1 MB so they stay searchable.
MAX_TEXT_BYTES = 1_000_000
MAX_CUSTOM_VALUE_BYTES = 1024
TRUNCATED_MARK = "…[truncated]"

LEVEL_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
}
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
class CapturedRecord:
    """A record as captured on the request path, waiting to be shipped."""

    created: float
    level: str
    message: str
    fields: dict[str, str]
    exception: str | None
    stack: str | None
    sequence: int


class LogCrashFormat:
    """How this process's log records become Log & Crash items."""

    def __init__(
        self,
        *,
        appkey: str,
        project_version: str,
        host: str,
        context: ContextProvider | None = None,
        static_fields: Mapping[str, Any] | None = None,
    ):
        self.appkey = appkey
        self.project_version = sanitise_version(project_version)
        self.host = host
        self._context = context
        self._static = custom_fields(static_fields or {})
        self._sequence = itertools.count(1)

    def capture(self, record: logging.LogRecord) -> CapturedRecord:
        """What cannot wait: the message, the traceback, the request context and the extra values as text.

        Key rules, redaction and size limits are applied later by `item`, off the request path.
        """
        fields: dict[str, str] = {"logger": record.name}
        if self._context is not None:
            fields.update((k, _as_text(v)) for k, v in self._context().items() if v is not None)
        for key, value in record.__dict__.items():
            if key not in RECORD_ATTRS and not key.startswith("_") and value is not None:
                # Rendered now: the object may not be usable outside its request (a closed DB session).
                fields[key] = _as_text(value)
        exception = None
        if record.exc_info and record.exc_info[0] is not None:
            exception = "".join(traceback.format_exception(*record.exc_info))
        return CapturedRecord(
            created=record.created,
            level=LEVEL_NAMES.get(record.levelno, record.levelname),
            message=record.getMessage(),
            fields=fields,
            exception=exception,
            stack=record.stack_info,
            sequence=next(self._sequence),
        )

    def item(self, captured: CapturedRecord) -> dict[str, Any]:
        """The Log & Crash item of a captured record (the collector's fields, valid custom keys, secrets removed)."""
        item: dict[str, Any] = {
            "projectName": self.appkey,
            "projectVersion": self.project_version,
            "logVersion": LOG_VERSION,
            "body": _cut(redact(captured.message), MAX_TEXT_BYTES),
            "logSource": LOG_SOURCE,
            "logType": LOG_TYPE,
            "host": self.host,
            "sendTime": str(int(captured.created)),
            "logLevel": captured.level,
            "lncBulkIndex": captured.sequence,
            **self._static,
            **custom_fields(captured.fields),
        }
        if captured.exception:
            item["txtException"] = _cut(redact(captured.exception), MAX_TEXT_BYTES)
        if captured.stack:
            item["txtStack"] = _cut(redact(captured.stack), MAX_TEXT_BYTES)
        return item

    def encode(self, captured: CapturedRecord) -> str:
        """The item as compact JSON, ready to join into a request body."""
        return json.dumps(self.item(captured), ensure_ascii=False, separators=(",", ":"), default=str)
