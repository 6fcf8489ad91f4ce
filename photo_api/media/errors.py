"""Why an image cannot be processed: permanent failures, never worth a retry."""

from __future__ import annotations


class MediaError(Exception):
    """The image itself cannot be processed; the message is safe to show to its owner."""


class UndecodableImageError(MediaError):
    """The bytes are not an image this service can decode (corrupt, truncated, or an unsupported codec)."""


class ImageTooLargeError(MediaError):
    """The header declares more pixels than the limit (a decompression bomb): refused before any pixel is decoded."""
