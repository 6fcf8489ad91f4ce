"""The Pushgateway pusher: the instance's aggregate, PUT from one thread of the gunicorn master."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..config import redact_url, redact_urls

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# A push that takes longer than this is abandoned; the next interval tries again. The push runs in its
# own thread in the master, so a slow Pushgateway delays nothing else.
PUSH_TIMEOUT_S = 10.0
# At shutdown, how long the master waits for a periodic push still in flight before the final one.
PUSH_THREAD_JOIN_S = PUSH_TIMEOUT_S + 1


class Pusher:
    """Pushes the instance's aggregate to a Pushgateway from one thread of the master, grouped by instance.

    PUT replaces the whole group each time, which is right: the registry holds every metric of the
    instance. Failures are logged when they start and when they end, not once per interval; the logs
    show the URL without the credentials it may carry.
    """

    def __init__(self, url: str, *, job: str, instance: str, registry: CollectorRegistry, interval: float, log: Any):
        self.url = url
        self.shown_url = redact_url(url)
        self.job = job
        self.grouping_key = {"instance": instance}
        self.registry = registry
        self.interval = interval
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-pusher", daemon=True)
        self._failing = False

    def start(self) -> None:
        """Push now and then every interval, until `leave`."""
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.push()
            if self._stop.wait(self.interval):
                return

    def push(self) -> bool:
        """One PUT of the whole registry; True on success."""
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(
                self.url, job=self.job, registry=self.registry, grouping_key=self.grouping_key, timeout=PUSH_TIMEOUT_S
            )
        except Exception as exc:  # URLError, HTTPError, OSError, timeout: all mean "try next time"
            if not self._failing:
                self.log.warning(
                    "metrics: push to %s failed (%s); retrying every %gs", self.shown_url, _describe(exc), self.interval
                )
            self._failing = True
            return False
        if self._failing:
            self.log.info("metrics: pushing to %s again", self.shown_url)
        self._failing = False
        return True

    def leave(self, linger: float) -> None:
        """Stop the periodic pushes, push the final values, keep them `linger` seconds, delete the group."""
        from prometheus_client import delete_from_gateway

        self._stop.set()
        self._thread.join(PUSH_THREAD_JOIN_S)
        if self.push() and linger > 0:
            time.sleep(linger)
        try:
            delete_from_gateway(self.url, job=self.job, grouping_key=self.grouping_key, timeout=PUSH_TIMEOUT_S)
        except Exception as exc:
            self.log.warning(
                "metrics: could not delete group %s from %s (%s)", self.grouping_key, self.shown_url, _describe(exc)
            )
        else:
            self.log.info("metrics: deleted group %s from %s", self.grouping_key, self.shown_url)


def _describe(exc: Exception) -> str:
    # urllib's errors may quote the URL they were given, credentials included.
    return redact_urls(str(exc))
