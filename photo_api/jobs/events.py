"""What the jobs report, and to whom: an adapter of the metrics layer, or nothing."""

from __future__ import annotations

from typing import Protocol

# The outcomes of one run of a job (the `result` label of photo_api_jobs_total).
READY = "ready"  # renditions stored, metadata recorded
FAILED = "failed"  # given up: the image itself is the problem, or the attempts are used up
RETRY = "retry"  # a transient error (storage, database): raised, so the queue runs it again after a backoff
SKIPPED = "skipped"  # nothing to do: already processed, or the photo is gone
RESULTS = (READY, FAILED, RETRY, SKIPPED)


class JobEvents(Protocol):
    """Receives one call per job run and per enqueue attempt."""

    def job_finished(self, job: str, result: str, seconds: float) -> None:
        """A run of `job` ended with `result` after `seconds`."""

    def enqueued(self, ok: bool) -> None:
        """A job was handed to the queue (ok), or could not be (the reaper enqueues it later)."""


class NoEvents:
    """Records nothing."""

    def job_finished(self, job: str, result: str, seconds: float) -> None:
        """Nothing."""

    def enqueued(self, ok: bool) -> None:
        """Nothing."""
