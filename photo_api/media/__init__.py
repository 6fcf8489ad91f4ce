"""Image processing for renditions and metadata: decoding with limits, EXIF reading, scaling, ThumbHash.

No Flask, no database, no storage: plain bytes in, plain values out. The jobs (photo_api/jobs) decide
where the bytes come from and where the results go.
"""

from __future__ import annotations

from .decode import open_image, register_heif
from .errors import ImageTooLargeError, MediaError, UndecodableImageError
from .metadata import PhotoMetadata, read_metadata
from .renditions import (
    DEFAULT_SPECS,
    JPEG,
    PREVIEW,
    THUMBNAIL,
    WEBP,
    Encoding,
    Rendered,
    Rendition,
    RenditionSpec,
    render,
)
from .thumbhash import rgba_to_thumbhash

__all__ = [
    "DEFAULT_SPECS",
    "JPEG",
    "PREVIEW",
    "THUMBNAIL",
    "WEBP",
    "Encoding",
    "ImageTooLargeError",
    "MediaError",
    "PhotoMetadata",
    "Rendered",
    "Rendition",
    "RenditionSpec",
    "UndecodableImageError",
    "open_image",
    "read_metadata",
    "register_heif",
    "render",
    "rgba_to_thumbhash",
]
