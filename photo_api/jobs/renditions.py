"""The renditions job: from a stored original to its thumbnail, preview, ThumbHash and metadata.

Idempotent by construction: the renditions go to keys fixed by the photo (a second run overwrites them
with the same bytes), and the row changes only while it is still `pending` (services/processing.py).
Whatever the image itself makes impossible (a decompression bomb, bytes no decoder reads) fails the photo
at once; anything else (storage or database unavailable) is raised for the queue to retry with backoff,
until the photo's attempts are used up, and then it fails with the error recorded for its owner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from ..db import Database
from ..images import ALLOWED_IMAGE_TYPES, rendition_key
from ..media import PREVIEW, THUMBNAIL, Encoding, MediaError, Rendered, render
from ..media.strip import strip
from ..models import NO_STRIPPED_COPY
from ..services import deletions, processing
from ..storage import ObjectNotFoundError, Storage
from .events import FAILED, READY, RETRY, SKIPPED, JobEvents, NoEvents

log = logging.getLogger(__name__)

JOB_NAME = "renditions"
# The storage name of the public copy (the original without its metadata), beside the renditions.
STRIPPED_NAME = "public"


@dataclass(frozen=True)
class JobContext:
    """What a job needs, built once per process by whoever runs jobs (the worker, the local runner)."""

    db: Database
    storage: Storage
    encoding: Encoding
    max_pixels: int
    max_attempts: int
    # Where the CPU-heavy step runs: inline in a worker process, on a native thread under gevent.
    offload: Callable[[Callable[[], Rendered]], Rendered] = field(default=lambda work: work())
    events: JobEvents = field(default_factory=NoEvents)


class TransientJobError(Exception):
    """A run failed for a reason outside the image (storage, database): worth another attempt later."""


def process_photo(ctx: JobContext, photo_id: int) -> str:
    """Produce and store the renditions and metadata of photo `photo_id`; the outcome (events.RESULTS).

    Raises TransientJobError when another attempt may succeed; the queue runs the job again later.
    """
    started = time.monotonic()
    result = RETRY
    try:
        result = _process(ctx, photo_id)
        # Then the public copy, from the original the renditions came from (or, for a photo processed before
        # public copies existed, on its own): cheap, no pixel is decoded.
        if _strip(ctx, photo_id) and result == SKIPPED:
            result = READY
        return result
    finally:
        ctx.events.job_finished(JOB_NAME, result, time.monotonic() - started)


def _process(ctx: JobContext, photo_id: int) -> str:
    session = ctx.db.session()
    try:
        try:
            claim = processing.claim(session, photo_id)
        except Exception as exc:
            raise TransientJobError(f"database: {type(exc).__name__}") from exc
        if claim is None:
            return SKIPPED
        if claim.attempt > ctx.max_attempts:
            # Earlier attempts ended without a word (a worker killed, an out-of-memory kill): stop here.
            processing.fail(session, photo_id, f"processing was interrupted {claim.attempt - 1} times")
            log.error("renditions abandoned after repeated interruptions", extra={"photo_id": photo_id})
            return FAILED
        try:
            return _render_and_store(ctx, session, claim)
        except MediaError as exc:
            processing.fail(session, photo_id, str(exc))
            log.warning("photo cannot be processed", extra={"photo_id": photo_id, "reason": str(exc)})
            return FAILED
        except ObjectNotFoundError:
            processing.fail(session, photo_id, "the stored original is missing")
            log.error("stored object missing for an existing row", extra={"photo_id": photo_id})
            return FAILED
        except Exception as exc:
            reason = f"{type(exc).__name__} while processing"
            if claim.attempt >= ctx.max_attempts:
                _fail_quietly(session, photo_id, f"gave up after {claim.attempt} attempts: {reason}")
                log.error("renditions failed for good", extra={"photo_id": photo_id, "error": reason})
                return FAILED
            log.warning(
                "renditions failed; will retry", extra={"photo_id": photo_id, "attempt": claim.attempt, "error": reason}
            )
            raise TransientJobError(reason) from exc
    finally:
        session.close()


def _render_and_store(ctx: JobContext, session: Any, claim: processing.Claim) -> str:
    session.close()  # no connection held while storage and the CPU work
    # The original goes to a temporary file, not memory: decoders want to seek, and a 25 MB upload
    # would otherwise sit in the worker's memory next to its decoded pixels.
    with tempfile.TemporaryFile(prefix="photo-api-original-") as original:
        with ctx.storage.open(claim.key) as reader:
            for chunk in reader:
                original.write(chunk)
        original.seek(0)
        rendered = ctx.offload(lambda: render(original, max_pixels=ctx.max_pixels, encoding=ctx.encoding))
        original.seek(0)
        # The public copy before the photo is ready: `ready` means everything a share serves exists.
        public = _store_public_copy(
            ctx, claim.owner_id, claim.photo_id, claim.key, claim.content_type, rendered.metadata.orientation, original
        )
    stored = {}
    keys = [public.key] if public.key not in (NO_STRIPPED_COPY, claim.key) else []
    for spec in (THUMBNAIL, PREVIEW):
        rendition = rendered.renditions[spec.name]
        key = rendition_key(claim.owner_id, claim.photo_id, spec.name, rendition.extension)
        obj = ctx.storage.put(key, cast(BinaryIO, io.BytesIO(rendition.data)), content_type=rendition.content_type)
        stored[spec.name] = processing.StoredRendition(size=obj.size, etag=obj.etag)
        keys.append(key)
    done = processing.complete(
        session,
        claim.photo_id,
        metadata=dataclasses.asdict(rendered.metadata),
        thumbhash=rendered.thumbhash,
        rendition_type=ctx.encoding.content_type,
        thumbnail=stored[THUMBNAIL.name],
        preview=stored[PREVIEW.name],
        public=public,
    )
    if done:
        log.info("renditions stored", extra={"photo_id": claim.photo_id, "attempt": claim.attempt})
        return READY
    if not processing.photo_exists(session, claim.photo_id):
        # Deleted while we worked: its delete could not know about these objects yet.
        deletions.delete_objects(session, ctx.storage, keys)
    return SKIPPED


def _store_public_copy(
    ctx: JobContext,
    owner_id: int,
    photo_id: int,
    original_key: str,
    content_type: str,
    orientation: int | None,
    original: BinaryIO,
) -> processing.PublicCopy:
    """Strip the original's metadata (photo_api/media/strip.py) and store the result beside the renditions.

    The original is read whole into memory (at most MAX_UPLOAD_BYTES): the filter needs every segment, and
    a worker process holds one job at a time. An original with nothing to remove is its own public copy;
    one that cannot be stripped (HEIC, bytes the filter cannot follow) has none: the public gets the preview.
    """
    data = original.read()
    try:
        public = strip(data, content_type, orientation)
    except MediaError as exc:
        log.info("no public copy without metadata", extra={"photo_id": photo_id, "reason": str(exc)})
        return processing.PublicCopy(NO_STRIPPED_COPY, None, None)
    if public is data:
        return processing.PublicCopy(original_key, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())
    key = rendition_key(owner_id, photo_id, STRIPPED_NAME, ALLOWED_IMAGE_TYPES.get(content_type, ""))
    obj = ctx.storage.put(key, cast(BinaryIO, io.BytesIO(public)), content_type=content_type)
    return processing.PublicCopy(key, obj.size, obj.etag)


def _strip(ctx: JobContext, photo_id: int) -> bool:
    """Make and record the public copy of a photo processed before public copies existed; True if recorded."""
    session = ctx.db.session()
    try:
        try:
            claim = processing.claim_strip(session, photo_id)
        except Exception as exc:
            raise TransientJobError(f"database: {type(exc).__name__}") from exc
        if claim is None:
            return False
        session.close()  # no connection held while storage answers
        try:
            with tempfile.TemporaryFile(prefix="photo-api-original-") as original:
                with ctx.storage.open(claim.key) as reader:
                    for chunk in reader:
                        original.write(chunk)
                original.seek(0)
                public = _store_public_copy(
                    ctx, claim.owner_id, photo_id, claim.key, claim.content_type, claim.orientation, original
                )
        except ObjectNotFoundError:
            log.error("stored object missing for an existing row", extra={"photo_id": photo_id})
            public = processing.PublicCopy(NO_STRIPPED_COPY, None, None)
        except Exception as exc:
            log.warning("public copy failed; will retry", extra={"photo_id": photo_id, "error": type(exc).__name__})
            raise TransientJobError(f"{type(exc).__name__} while removing metadata") from exc
        done = processing.complete_strip(session, photo_id, public)
        if (
            not done
            and public.key not in (NO_STRIPPED_COPY, claim.key)
            and not processing.photo_exists(session, photo_id)
        ):
            deletions.delete_objects(session, ctx.storage, [public.key])  # deleted while we worked
        if done:
            log.info("public copy stored", extra={"photo_id": photo_id})
        return done
    finally:
        session.close()


def _fail_quietly(session: Any, photo_id: int, error: str) -> None:
    try:
        session.rollback()
        processing.fail(session, photo_id, error)
    except Exception:
        # The database is the failure: the photo stays pending and the reaper enqueues it again later.
        log.exception("could not record a failed photo", extra={"photo_id": photo_id})
