"""Handing photos to the queue: after an upload, and again from the reaper for those never (or long ago) handed."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from ..services import processing
from .queue import JobQueue

log = logging.getLogger(__name__)

REQUEUE_BATCH = 500


def enqueue_photo(session: Session, queue: JobQueue, photo_id: int) -> bool:
    """Enqueue a photo's job after its row was committed; the photo then waits for a while before the reaper
    looks at it again. Never raises: an upload has succeeded whatever happens here."""
    try:
        if not queue.enqueue(photo_id):
            return False
    except Exception:
        # Whatever the queue does wrong, the photo is stored: the reaper enqueues its job later.
        log.exception("could not enqueue a job", extra={"photo_id": photo_id})
        return False
    try:
        processing.mark_enqueued(session, photo_id)
    except Exception:
        # The job may be queued without the note: the reaper enqueues it once more, which is harmless.
        log.warning("could not note an enqueued job", extra={"photo_id": photo_id}, exc_info=True)
        session.rollback()
    return True


def requeue_waiting(
    session: Session, queue: JobQueue, *, now: datetime, stale_after: timedelta, batch: int = REQUEUE_BATCH
) -> tuple[int, int]:
    """Enqueue every photo whose job was never handed to the queue or was handed more than `stale_after` ago.

    Returns (enqueued, not enqueued); those not enqueued (the queue refused) are taken again by the next run.
    """
    enqueued = refused = 0
    while True:
        taken = processing.take_unqueued(session, now=now, stale_after=stale_after, limit=batch)
        if not taken:
            break
        failed = [photo_id for photo_id in taken if not queue.enqueue(photo_id)]
        processing.forget_enqueue(session, failed)
        enqueued += len(taken) - len(failed)
        refused += len(failed)
        if failed or len(taken) < batch:
            break  # a refusing queue refuses the rest too: the next run tries again
    if enqueued or refused:
        log.info("waiting photos enqueued", extra={"enqueued": enqueued, "refused": refused})
    return enqueued, refused
