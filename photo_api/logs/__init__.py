"""Structured logs: one JSON object per line on stdout, with the request's context on every line.

Beside it, for NHN Cloud Log & Crash Search: `logcrash` (the item a record becomes, secrets removed)
and `worker` (the bounded queue drained in the background); the transport is `clients.logcrash`.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed through `extra=` and is emitted as a field.
RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Never emitted, whatever a caller passes in `extra=`.
FORBIDDEN_FIELDS = frozenset({"password", "password_hash", "token", "access_token", "authorization", "secret"})
ContextProvider = Callable[[], dict[str, Any]]


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: timestamp, level, logger, message, context and extra fields."""

    def __init__(self, static: dict[str, Any] | None = None, context: ContextProvider | None = None):
        super().__init__()
        self.static = static or {}
        self.context = context

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        if self.context is not None:
            out.update(self.context())
        for key, value in record.__dict__.items():
            if key not in RECORD_ATTRS and key not in FORBIDDEN_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str, static: dict[str, Any], context: ContextProvider | None = None) -> None:
    """Send every log record of the process to stdout as JSON (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(static, context))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_photo_api", False):
            root.removeHandler(old)
    handler._photo_api = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Werkzeug's own access log would repeat ours in plain text, with raw paths (share tokens).
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
