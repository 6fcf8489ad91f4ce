"""What a photo's own metadata says: size, when it was taken, by which camera, which way up, and where.

Read from the EXIF block (JPEG, HEIC, WebP, PNG eXIf); nothing here decodes pixels. Values that are
missing, malformed or out of range are None: a photo without metadata is normal, never an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from PIL import Image

# EXIF tags (EXIF 2.32 / CIPA DC-008).
TAG_MAKE = 0x010F
TAG_MODEL = 0x0110
TAG_ORIENTATION = 0x0112
IFD_EXIF = 0x8769
IFD_GPS = 0x8825
TAG_DATETIME_ORIGINAL = 0x9003
TAG_OFFSET_TIME_ORIGINAL = 0x9011
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4
GPS_ALTITUDE_REF, GPS_ALTITUDE = 5, 6
# Orientations 5 to 8 turn the picture by 90 degrees: the displayed width is the stored height.
TRANSPOSED_ORIENTATIONS = frozenset({5, 6, 7, 8})
MAX_CAMERA_TEXT = 64  # the columns' length; real makes and models are far shorter
# Where XMP lives in Pillow's `info` for each format (JPEG/WebP "xmp", PNG its iTXt keyword).
_XMP_INFO_KEYS = ("xmp", "XML:com.adobe.xmp")
_EXIF_DATETIME = re.compile(r"(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")
MAX_OFFSET_MINUTES = 14 * 60  # UTC-12 to UTC+14 are the zones in use


@dataclass(frozen=True)
class PhotoMetadata:
    """What is stored on the photo row; `taken_at` is UTC (the camera's clock read as UTC without an offset)."""

    width: int
    height: int
    orientation: int | None = None
    taken_at: datetime | None = None
    taken_at_offset_minutes: int | None = None  # None: the camera recorded no offset
    camera_make: str | None = None
    camera_model: str | None = None
    gps_latitude: float | None = None
    gps_longitude: float | None = None
    gps_altitude: float | None = None
    has_embedded_metadata: bool = False  # EXIF or XMP present in the original: what a public copy must lose


def read_metadata(image: Image.Image) -> PhotoMetadata:
    """The metadata of an opened (not necessarily decoded) image; its size is the full, upright size."""
    exif = image.getexif()
    orientation = _int_in(exif.get(TAG_ORIENTATION), 1, 8)
    width, height = image.size
    if orientation in TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    details = exif.get_ifd(IFD_EXIF)
    taken_at, offset = _taken_at(details.get(TAG_DATETIME_ORIGINAL), details.get(TAG_OFFSET_TIME_ORIGINAL))
    latitude, longitude, altitude = _gps(exif.get_ifd(IFD_GPS))
    has_xmp = any(image.info.get(key) for key in _XMP_INFO_KEYS)
    return PhotoMetadata(
        width=width,
        height=height,
        orientation=orientation,
        taken_at=taken_at,
        taken_at_offset_minutes=offset,
        camera_make=_text(exif.get(TAG_MAKE)),
        camera_model=_text(exif.get(TAG_MODEL)),
        gps_latitude=latitude,
        gps_longitude=longitude,
        gps_altitude=altitude,
        has_embedded_metadata=bool(len(exif)) or has_xmp,
    )


def _int_in(value: Any, low: int, high: int) -> int | None:
    return value if isinstance(value, int) and low <= value <= high else None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    # EXIF strings are NUL-terminated and often padded with spaces.
    cleaned = "".join(ch for ch in value.split("\x00", 1)[0] if ch.isprintable()).strip()
    return cleaned[:MAX_CAMERA_TEXT] or None


def _taken_at(raw: Any, raw_offset: Any) -> tuple[datetime | None, int | None]:
    """DateTimeOriginal with OffsetTimeOriginal as (UTC instant, offset minutes); without an offset the
    camera's wall clock is kept as if it were UTC, and the offset is None."""
    match = _EXIF_DATETIME.fullmatch(_text(raw) or "")
    if match is None:
        return None, None
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        local = datetime(year, month, day, hour, minute, second)
    except ValueError:  # "0000:00:00 00:00:00" is how cameras say "unknown"
        return None, None
    offset_match = _EXIF_OFFSET.fullmatch(_text(raw_offset) or "")
    if offset_match is None:
        return local.replace(tzinfo=UTC), None
    sign, hours, minutes = offset_match.groups()
    offset = (int(hours) * 60 + int(minutes)) * (-1 if sign == "-" else 1)
    if abs(offset) > MAX_OFFSET_MINUTES:
        return local.replace(tzinfo=UTC), None
    return local.replace(tzinfo=timezone(timedelta(minutes=offset))).astimezone(UTC), offset


def _rational(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) else None


def _degrees(parts: Any, ref: Any, negative: str, limit: float) -> float | None:
    if not isinstance(parts, tuple) or len(parts) != 3:
        return None
    values = [_rational(part) for part in parts]
    if any(v is None or v < 0 for v in values):
        return None
    degrees, minutes, seconds = (v for v in values if v is not None)
    result = degrees + minutes / 60 + seconds / 3600
    if _text(ref) == negative:
        result = -result
    return round(result, 7) if abs(result) <= limit else None


def _gps(gps: dict[int, Any]) -> tuple[float | None, float | None, float | None]:
    latitude = _degrees(gps.get(GPS_LATITUDE), gps.get(GPS_LATITUDE_REF), "S", 90)
    longitude = _degrees(gps.get(GPS_LONGITUDE), gps.get(GPS_LONGITUDE_REF), "W", 180)
    if latitude is None or longitude is None:
        return None, None, None  # half a position is no position
    altitude = _rational(gps.get(GPS_ALTITUDE))
    if altitude is not None and gps.get(GPS_ALTITUDE_REF) in (1, b"\x01"):
        altitude = -altitude  # below sea level
    return latitude, longitude, None if altitude is None else round(altitude, 2)
