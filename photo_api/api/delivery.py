"""Streaming an object to the client: ETag/304, a single Range/206, Content-Length, never whole in memory."""

from __future__ import annotations

import logging
import re

from flask import Response, request

from .. import metrics
from ..clients import CdnUnavailable
from ..errors import NotFound, RangeNotSatisfiable
from ..models import Photo
from ..services import photos
from ..storage import ObjectNotFound, Storage
from ..storage import RangeNotSatisfiable as StorageRangeNotSatisfiable

log = logging.getLogger(__name__)

# The redirect's Location carries an expiring token: no cache may keep it past the token's life.
CDN_REDIRECT_CACHE_CONTROL = "private, no-store"

_SINGLE_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
# More digits than any object size needs; int() refuses strings past 4300 digits, and a longer
# position is simply "beyond any object".
_MAX_POSITION_DIGITS = 18


def _position(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_POSITION_DIGITS else 10**_MAX_POSITION_DIGITS


def parse_range(header: str | None, size: int) -> tuple[int, int | None] | None:
    """The single byte range asked for as (first, last-or-None), or None to send the whole object.

    Multiple ranges and malformed headers are ignored (RFC 9110 allows answering 200 with everything).
    A range starting past the end raises RangeNotSatisfiable (416).
    """
    if not header:
        return None
    m = _SINGLE_RANGE.match(header.strip())
    if not m or (m[1] == "" and m[2] == ""):
        return None
    first, last = m[1], m[2]
    if first == "":  # suffix: the last N bytes
        n = _position(last)
        if n == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - n), None
    start = _position(first)
    end = _position(last) if last else None
    if end is not None and end < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, end


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return f'"{etag}"' in candidates


def send_object(
    storage: Storage, *, key: str, content_type: str, etag: str, size: int, cache_control: str = "private"
) -> Response:
    """Answer GET for a stored object: 304 on a matching If-None-Match, 206 for one Range, else 200."""
    headers = {"ETag": f'"{etag}"', "Cache-Control": cache_control, "Accept-Ranges": "bytes"}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return Response(status=304, headers=headers)
    byte_range = parse_range(request.headers.get("Range"), size)
    if_range = request.headers.get("If-Range")
    if byte_range is not None and if_range is not None and if_range.strip() != f'"{etag}"':
        byte_range = None  # the client's copy is stale: send it everything
    try:
        reader = storage.open(key, byte_range=byte_range)
    except ObjectNotFound:
        log.error("stored object missing for an existing row", extra={"object_key": key})
        raise NotFound("Image not found") from None
    except StorageRangeNotSatisfiable as exc:
        raise RangeNotSatisfiable(exc.size) from None
    headers["Content-Length"] = str(reader.length)
    status = 200
    if byte_range is not None:
        status = 206
        headers["Content-Range"] = f"bytes {reader.start}-{reader.end}/{reader.obj.size}"
    response = Response(iter(reader), status=status, mimetype=content_type, headers=headers, direct_passthrough=True)
    response.call_on_close(reader.close)  # also when the client goes away mid-stream
    return response


def deliver_image(photo: Photo, *, token_seconds: int, cache_control: str = "private") -> Response:
    """A photo's bytes: 302 to a signed CDN URL when a CDN is configured and answering, else streamed.

    The CDN is an optimisation, never a dependency: when its token API fails or its circuit is open
    the image is streamed from storage instead (counted as a fallback).
    """
    from .common import db_session, runtime

    rt = runtime()
    # Bulkhead: the row is loaded; give the DB connection back before any network I/O (CDN token call,
    # storage GET), so a slow or blackholed dependency cannot also exhaust the worker's DB pool.
    db_session().close()
    if rt.cdn is not None:
        try:
            url = rt.cdn.signed_url(photo.filename, token_seconds)
        except CdnUnavailable as exc:
            metrics.fallback("cdn")
            log.warning("CDN unavailable, streaming instead", extra={"reason": exc.reason, "photo_id": photo.id})
        else:
            metrics.image_delivery("cdn", "ok")
            return Response(status=302, headers={"Location": url, "Cache-Control": CDN_REDIRECT_CACHE_CONTROL})
    try:
        response = send_object(
            rt.storage,
            key=photo.filename,
            content_type=photo.content_type,
            etag=photos.image_etag(rt.storage, photo),
            size=photo.file_size,
            cache_control=cache_control,
        )
    except Exception as exc:
        metrics.image_delivery("stream", metrics.delivery_result(getattr(exc, "status", 500)))
        raise
    metrics.image_delivery("stream", metrics.delivery_result(response.status_code))
    return response
