"""Opening an image without trusting it: the declared size is checked before any pixel is decoded."""

from __future__ import annotations

import io
import threading
import warnings
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from .errors import ImageTooLargeError, UndecodableImageError

_heif_lock = threading.Lock()
_heif_registered = False


def register_heif() -> None:
    """Teach Pillow to open HEIC/HEIF (pillow-heif); done once per process, on first use rather than at import."""
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            from pillow_heif import register_heif_opener

            # Thumbnails embedded in the file are not wanted: the renditions come from the primary image.
            register_heif_opener(thumbnails=False)
            _heif_registered = True


def open_image(data: bytes | BinaryIO, *, max_pixels: int) -> Image.Image:
    """Open `data` (bytes, or a seekable file) lazily (header only); refuse it past `max_pixels` pixels.

    Image.open reads the header and nothing else, so a decompression bomb (a few KB declaring 50,000 x
    50,000 pixels) fails here in milliseconds, long before decoding would allocate gigabytes. Pillow's own
    check (a warning past Image.MAX_IMAGE_PIXELS, an error past twice that, 179 megapixels) is the
    outer bound: MEDIA_MAX_PIXELS is validated below it, so the limit that applies is always ours.
    """
    register_heif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"the image declares more than {max_pixels} pixels, the limit") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UndecodableImageError(f"the file cannot be decoded as an image ({type(exc).__name__})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLargeError(f"the image is {width}x{height} pixels, more than the limit of {max_pixels}")
    return image
