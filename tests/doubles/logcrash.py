"""The NHN Log & Crash collector (`POST /v2/log`), written from the documented contract (docs/nhn-cloud.md).

Accepts one object or an array. A request over 52 MB is refused (413); an item over 8 MB, a wrong
`logVersion`, an unknown `projectName`, a bad `projectVersion` or a bad custom key fail that item only:
arrays get the header plus `body.data.{total, errors, resultList}` in send order. Records everything it
received. Failure switches: `http_failures` (statuses for the next requests), `item_failure` (inject a
per-item failure), and the transport switches of `LoopbackServer` (delay, blackhole, stop).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from .http import LoopbackServer, Reply, Request

MAX_REQUEST_BYTES = 52 * 1024 * 1024
MAX_LOG_BYTES = 8_388_608
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
CUSTOM_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
PROJECT_VERSION = re.compile(r"^[A-Za-z0-9._-]+$")
BAD_KEY_MESSAGE = 'A custom key, starting with an alphabet, must include "A~Z, a~z, 0~9, -_".'


def _json(payload: dict[str, Any], status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def _header(ok: bool, message: str = "Success", code: int = 0) -> dict[str, Any]:
    return {"isSuccessful": ok, "resultCode": code if not ok else 0, "resultMessage": message}


class LogCollectorDouble:
    """A Log & Crash collector knowing the appkeys in `projects`."""

    def __init__(self, *, projects: set[str]):
        self.projects = set(projects)
        self.requests = 0
        self.bodies: list[bytes] = []  # raw request bodies, as received
        self.received: list[dict[str, Any]] = []  # every item, accepted or not
        self.accepted: list[dict[str, Any]] = []
        self.http_failures: list[int] = []  # statuses to answer the next requests with, e.g. [500, 503]
        self.item_failure: Callable[[dict[str, Any]], str | None] | None = None
        self.server = LoopbackServer(self.handle, max_body=MAX_REQUEST_BYTES)

    def check(self, item: Any, size: int) -> str | None:
        """Why the collector refuses `item` (None when it takes it)."""
        if not isinstance(item, dict):
            return "log must be a JSON object"
        if size > MAX_LOG_BYTES:
            return f"log size {size} exceeds {MAX_LOG_BYTES} bytes"
        version = item.get("logVersion")
        if version != "v2":
            return f"LogVersion Mismatch: {version}, /v2/log"
        if item.get("projectName") not in self.projects:
            return f"The project({item.get('projectName')}) is not registered"
        if not isinstance(item.get("projectVersion"), str) or not PROJECT_VERSION.match(item["projectVersion"]):
            return "projectVersion may only contain A-Z a-z 0-9 - . _"
        if any(key not in BASIC_FIELDS and not CUSTOM_KEY.match(key) for key in item):
            return BAD_KEY_MESSAGE
        if self.item_failure is not None:
            return self.item_failure(item)
        return None

    def handle(self, request: Request) -> Reply:
        """Answer one request as the documented collector would."""
        if request.method != "POST" or request.path != "/v2/log":
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        self.requests += 1
        self.bodies.append(request.body)
        if self.http_failures:
            return Reply(self.http_failures.pop(0), b"<html>collector error</html>", {"Content-Type": "text/html"})
        try:
            payload = json.loads(request.body)
        except ValueError:
            return _json({"header": _header(False, "invalid JSON", 400)}, 400)
        if isinstance(payload, list):
            results = []
            for item in payload:
                size = len(json.dumps(item, ensure_ascii=False).encode())
                reason = self.check(item, size)
                self.received.append(item)
                if reason is None:
                    self.accepted.append(item)
                results.append({"isSuccessful": reason is None, "resultMessage": reason or "Success"})
            errors = sum(1 for r in results if not r["isSuccessful"])
            data = {"total": len(results), "errors": errors, "resultList": results}
            return _json({"header": _header(True), "body": {"data": data}})
        self.received.append(payload)
        reason = self.check(payload, len(request.body))
        if reason == BAD_KEY_MESSAGE:
            # The guide shows this one as a bare text answer (its status is not documented).
            return Reply(400, reason.encode(), {"Content-Type": "text/plain"})
        if reason is not None:
            return _json({"header": _header(False, reason, -1)})
        self.accepted.append(payload)
        return _json({"header": _header(True)})
