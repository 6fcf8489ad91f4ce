"""Renditions of a photo: the thumbnail and preview a client shows instead of the original, and its ThumbHash.

One pass over the original: the header is checked (decode.py), the metadata read (metadata.py), the
pixels decoded once (for a JPEG at a reduced scale that still covers the largest rendition), turned
upright, and scaled down to each size (never up). What is encoded carries no EXIF or XMP: only the
pixels and the ICC colour profile, so colours stay right and nothing about the camera or place leaves.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageOps

from .decode import open_image
from .errors import UndecodableImageError
from .metadata import PhotoMetadata, read_metadata
from .thumbhash import MAX_SIDE as THUMBHASH_MAX_SIDE
from .thumbhash import rgba_to_thumbhash

# Lanczos in steps: Pillow first shrinks by an integer factor (fast box filter) down to 3x the target, then
# resamples; visually the same as plain Lanczos, several times faster on a 12-megapixel source.
REDUCING_GAP = 3.0
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class RenditionSpec:
    """One size a client asks for: the picture scaled to fit a `long_side` square, never enlarged."""

    name: str
    long_side: int


@dataclass(frozen=True)
class Encoding:
    """How renditions are encoded (ops/bench/RESULTS.md compares the candidates)."""

    pillow_format: str
    content_type: str
    extension: str
    quality: int
    method: int = 4  # WebP's effort (0 fast .. 6 small); 4 is libwebp's default balance


WEBP = Encoding("WEBP", "image/webp", ".webp", quality=80)
JPEG = Encoding("JPEG", "image/jpeg", ".jpg", quality=85)
THUMBNAIL = RenditionSpec("thumb", 256)
PREVIEW = RenditionSpec("preview", 1440)
DEFAULT_SPECS = (THUMBNAIL, PREVIEW)


@dataclass(frozen=True)
class Rendition:
    """One encoded rendition."""

    name: str
    data: bytes
    width: int
    height: int
    content_type: str
    extension: str


@dataclass(frozen=True)
class Rendered:
    """Everything one pass over an original produced."""

    metadata: PhotoMetadata
    renditions: dict[str, Rendition]
    thumbhash: bytes


def render(
    data: bytes | BinaryIO,
    *,
    max_pixels: int,
    specs: Sequence[RenditionSpec] = DEFAULT_SPECS,
    encoding: Encoding = WEBP,
) -> Rendered:
    """Decode `data` (bytes or a seekable file) once and produce every rendition in `specs`, the metadata
    and the ThumbHash.

    Raises ImageTooLargeError (a decompression bomb: refused from the header) or UndecodableImageError.
    """
    largest = max(spec.long_side for spec in specs)
    with open_image(data, max_pixels=max_pixels) as image:
        metadata = read_metadata(image)
        icc_profile = image.info.get("icc_profile")
        if image.format == "JPEG":
            # DCT scaling: decode at 1/2, 1/4 or 1/8 when that still covers the largest rendition: a
            # quarter to a sixty-fourth of the pixels and memory (ops/bench/RESULTS.md).
            image.draft("RGB", (largest, largest))
        try:
            image.load()
            upright = ImageOps.exif_transpose(image) or image
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise UndecodableImageError(f"the image data cannot be decoded ({type(exc).__name__})") from None
        picture = upright.convert("RGBA" if _has_alpha(upright) else "RGB")

    renditions: dict[str, Rendition] = {}
    current = picture
    for spec in sorted(specs, key=lambda s: s.long_side, reverse=True):
        # Each size from the one above it: the thumbnail scales 1,440 pixels, not 12 million.
        current = current.copy()
        current.thumbnail((spec.long_side, spec.long_side), Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
        renditions[spec.name] = _encode(current, spec.name, encoding, icc_profile)
    small = current.copy()
    small.thumbnail((THUMBHASH_MAX_SIDE, THUMBHASH_MAX_SIDE), Image.Resampling.BOX)
    thumbhash = rgba_to_thumbhash(small.width, small.height, small.convert("RGBA").tobytes())
    return Rendered(metadata=metadata, renditions=renditions, thumbhash=thumbhash)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _encode(picture: Image.Image, name: str, encoding: Encoding, icc_profile: bytes | None) -> Rendition:
    if encoding.pillow_format == "JPEG" and picture.mode != "RGB":
        picture = picture.convert("RGB")
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": encoding.quality}
    if encoding.pillow_format == "WEBP":
        options["method"] = encoding.method
    else:
        options["optimize"] = True
    if icc_profile:
        options["icc_profile"] = icc_profile
    # A copy made by `thumbnail` keeps `info` (EXIF and XMP included) and some encoders write what is
    # there: the saved picture gets nothing but what is passed here.
    picture.info = {}
    picture.save(buffer, encoding.pillow_format, **options)
    return Rendition(
        name=name,
        data=buffer.getvalue(),
        width=picture.width,
        height=picture.height,
        content_type=encoding.content_type,
        extension=encoding.extension,
    )
