"""Streaming an object to the client: ETag/304, a single Range/206, Content-Length, never whole in memory."""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import quote

from flask import Response, request
from werkzeug.http import parse_range_header

from .. import metrics
from ..clients import CdnUnavailableError
from ..errors import NotFoundError, RangeNotSatisfiableError, ServiceUnavailableError
from ..media import PREVIEW
from ..models import NO_STRIPPED_COPY, Photo
from ..services import photos
from ..storage import ObjectNotFoundError, RangeOutsideObjectError, Storage
from .common import db_session
from .context import current_cdn, current_storage

log = logging.getLogger(__name__)

# The redirect's Location carries an expiring token: no cache may keep it past the token's life.
CDN_REDIRECT_CACHE_CONTROL = "private, no-store"
# Stored bytes are the client's: whatever they turn out to be, a browser must show them as the image
# type we checked (nosniff), and never run them as a document with our origin's rights (a sandboxed CSP
# without any source), even when opened directly.
CONTENT_SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox"}
FALLBACK_DOWNLOAD_NAME = "photo"
# Inside a quoted filename: quotes and backslashes would end or escape it; control characters have no place.
_UNSAFE_IN_QUOTES = re.compile(r'["\\\x00-\x1f\x7f]')

# A position with more digits than this is past the end of any object; werkzeug's parser (like int())
# refuses numbers of more than 4300 digits, which would turn a valid but huge range into "no range".
_MAX_POSITION_DIGITS = 18
_HUGE_POSITION = re.compile(rf"(?<!\d)0*[1-9]\d{{{_MAX_POSITION_DIGITS},}}")
_BEYOND_ANY_OBJECT = str(10**_MAX_POSITION_DIGITS)
_ZERO_SUFFIX = re.compile(r"^bytes=\s*-0+\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int | None] | None:
    """The single byte range asked for as (first, last-or-None), or None to send the whole object.

    werkzeug parses the header; the rules of RFC 9110 §14.1.2 for one object of `size` bytes are applied
    here, where werkzeug's own `range_for_length` differs: a suffix longer than the object selects all of
    it (werkzeug: no range), and a zero-length suffix cannot be satisfied (416; werkzeug: malformed).
    Several ranges, other units and malformed headers are ignored (200 with everything, which RFC 9110
    allows). A range starting past the end raises RangeNotSatisfiable (416).
    """
    if not header:
        return None
    if _ZERO_SUFFIX.match(header):
        raise RangeNotSatisfiableError(size)
    parsed = parse_range_header(_HUGE_POSITION.sub(_BEYOND_ANY_OBJECT, header))
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None
    start, stop = parsed.ranges[0]  # stop is exclusive; a negative start is a suffix length
    if start < 0:
        return max(0, size + start), None
    if start >= size:
        raise RangeNotSatisfiableError(size)
    return start, None if stop is None else stop - 1


def _if_range_matches(etag: str) -> bool:
    """If-Range names our current ETag. Strong comparison (RFC 9110 §13.1.5): a weak validator never
    matches, and werkzeug's parser drops the W/ mark, so it is checked on the raw value; a date never
    matches either, since we send no Last-Modified."""
    raw = request.headers.get("If-Range", "").strip()
    return not raw.startswith("W/") and request.if_range.etag == etag


def content_disposition(filename: str) -> str:
    """`inline` with the name in a form every client reads safely: an ASCII fallback, and RFC 8187's
    `filename*` for the exact (UTF-8) name when it is not plain ASCII."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = _UNSAFE_IN_QUOTES.sub("_", ascii_name).strip()
    stem, dot, extension = ascii_name.rpartition(".")
    if not (stem if dot else extension).strip(" ."):  # nothing readable left, e.g. of a Korean name
        ascii_name = FALLBACK_DOWNLOAD_NAME + (dot + extension if dot else "")
    value = f'inline; filename="{ascii_name}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def send_object(
    storage: Storage,
    *,
    key: str,
    content_type: str,
    etag: str,
    size: int,
    filename: str,
    cache_control: str = "private",
) -> Response:
    """Answer GET for a stored object: 304 on a matching If-None-Match, 206 for one Range, else 200."""
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": cache_control,
        "Accept-Ranges": "bytes",
        **CONTENT_SAFETY_HEADERS,
        "Content-Disposition": content_disposition(filename),
    }
    # If-None-Match compares weakly (RFC 9110 §13.1.2), `*` included.
    if request.if_none_match.contains_weak(etag):
        return Response(status=304, headers=headers)
    byte_range = parse_range(request.headers.get("Range"), size)
    if byte_range is not None and "If-Range" in request.headers and not _if_range_matches(etag):
        byte_range = None  # the client's copy is stale: send it everything
    try:
        reader = storage.open(key, byte_range=byte_range)
    except ObjectNotFoundError:
        log.error("stored object missing for an existing row", extra={"object_key": key})
        raise NotFoundError("Image not found") from None
    except RangeOutsideObjectError as exc:
        raise RangeNotSatisfiableError(exc.size) from None
    headers["Content-Length"] = str(reader.length)
    status = 200
    if byte_range is not None:
        status = 206
        headers["Content-Range"] = f"bytes {reader.start}-{reader.end}/{reader.obj.size}"
    response = Response(iter(reader), status=status, mimetype=content_type, headers=headers, direct_passthrough=True)
    response.call_on_close(reader.close)  # also when the client goes away mid-stream
    return response


# How a rendition is named in file names and messages (its storage name is shorter).
RENDITION_LABELS = {"thumb": "thumbnail", "preview": "preview"}


@dataclass(frozen=True)
class Deliverable:
    """A stored object to answer with: the original of a photo, or one of its renditions."""

    photo_id: int
    key: str
    content_type: str
    size: int
    etag: str | None  # None: ask the store (an original of a release that recorded no checksum)
    filename: str


def original_of(photo: Photo, filename: str | None = None) -> Deliverable:
    """A photo's original (named `filename`, default the owner's original file name)."""
    return Deliverable(
        photo_id=photo.id,
        key=photo.filename,
        content_type=photo.content_type,
        size=photo.file_size,
        etag=photo.checksum,
        filename=photo.original_filename if filename is None else filename,
    )


def rendition_of(photo: Photo, name: str) -> Deliverable:
    """One rendition (`thumb` or `preview`) of a photo; NotFoundError (404) while it is not ready."""
    found = photos.rendition(photo, name)
    if found is None:
        raise NotFoundError(
            f"The {RENDITION_LABELS.get(name, name)} is not ready (processing_status: {photo.processing_status})"
        )
    return Deliverable(
        photo_id=photo.id,
        key=found.key,
        content_type=found.content_type,
        size=found.size,
        etag=found.etag,
        filename=f"photo-{photo.id}-{RENDITION_LABELS.get(name, name)}{found.extension}",
    )


# While a photo's public copy is being made: the job takes seconds after an upload (ops/bench/RESULTS.md).
PUBLIC_COPY_RETRY_AFTER_S = 10


def public_original_of(photo: Photo, filename: str) -> Deliverable:
    """The original as a share without metadata serves it: its public copy (photo_api/media/strip.py), or
    the preview for a format kept whole (HEIC/HEIF); 503 with Retry-After while the copy is being made.

    Never the stored original: until its copy exists, nothing of a photo leaves with its metadata.
    """
    key = photo.stripped_key
    if key is None:
        raise ServiceUnavailableError(
            "The photo's copy without metadata is being prepared", retry_after=PUBLIC_COPY_RETRY_AFTER_S
        )
    if key == NO_STRIPPED_COPY or photo.stripped_size is None:
        return rendition_of(photo, PREVIEW.name)
    return Deliverable(
        photo_id=photo.id,
        key=key,
        content_type=photo.content_type,
        size=photo.stripped_size,
        etag=photo.stripped_etag,
        filename=filename,
    )


def deliver_image(
    photo: Photo, *, token_seconds: int, filename: str | None = None, cache_control: str = "private"
) -> Response:
    """A photo's original bytes (see `deliver`); `filename` names the download (default: the owner's file name)."""
    return deliver(original_of(photo, filename), token_seconds=token_seconds, cache_control=cache_control)


def deliver(item: Deliverable, *, token_seconds: int, cache_control: str = "private") -> Response:
    """A stored object: 302 to a signed CDN URL when a CDN is configured and answering, else streamed.

    The CDN is an optimisation, never a dependency: when its token API fails or its circuit is open
    the object is streamed from storage instead (counted as a fallback).
    """
    # Bulkhead: the row is loaded; give the DB connection back before any network I/O (CDN token call,
    # storage GET), so a slow or blackholed dependency cannot also exhaust the worker's DB pool.
    db_session().close()
    cdn, storage = current_cdn(), current_storage()
    if cdn is not None:
        try:
            url = cdn.signed_url(item.key, token_seconds)
        except CdnUnavailableError as exc:
            metrics.fallback("cdn")
            log.warning("CDN unavailable, streaming instead", extra={"reason": exc.reason, "photo_id": item.photo_id})
        else:
            metrics.image_delivery("cdn", "ok")
            return Response(status=302, headers={"Location": url, "Cache-Control": CDN_REDIRECT_CACHE_CONTROL})
    try:
        response = send_object(
            storage,
            key=item.key,
            content_type=item.content_type,
            etag=item.etag or photos.object_etag(storage, item.key),
            size=item.size,
            filename=item.filename,
            cache_control=cache_control,
        )
    except Exception as exc:
        metrics.image_delivery("stream", metrics.delivery_result(getattr(exc, "status", 500)))
        raise
    metrics.image_delivery("stream", metrics.delivery_result(response.status_code))
    return response
