"""Image type detection from magic bytes, client filename sanitising and object key naming."""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Callable

# The only types we accept, with the extension their stored objects get.
ALLOWED_IMAGE_TYPES = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
}

# WebP is the longest signature to check: "RIFF", a 4-byte size, then "WEBP".
SNIFF_BYTES = 12

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")

MAX_FILENAME_LENGTH = 255
# A longer "extension" is really part of the name; cutting it off whole would lose more than it saves.
MAX_EXTENSION_LENGTH = 16
FALLBACK_FILENAME = "upload"
TOKEN_BYTES = 16  # 128 random bits: object names can be neither guessed nor collide

_PATH_SEPARATORS = re.compile(r"[/\\]")
# Bidirectional overrides let "x\u202egpj.exe" display as "xexe.jpg"; they have no place in a name.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: control characters (NUL included); Cs: lone surrogates, which cannot be encoded as UTF-8.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs"})


def _random_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def sniff_image_type(head: bytes) -> str | None:
    """Return the image content type that the leading bytes prove, or None."""
    if head.startswith(_JPEG_SIGNATURE):
        return "image/jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "image/png"
    if head.startswith(_GIF_SIGNATURES):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def sanitize_filename(name: str | None) -> str:
    """Reduce a client-supplied filename to a safe display name of at most 255 characters."""
    if name is None:
        return FALLBACK_FILENAME
    name = unicodedata.normalize("NFC", name)
    # Browsers on Windows send "C:\\Users\\me\\cat.jpg"; either separator ends a path part.
    name = _PATH_SEPARATORS.split(name)[-1]
    name = "".join(
        char for char in name if unicodedata.category(char) not in _DROPPED_CATEGORIES and char not in _BIDI_CONTROLS
    )
    name = name.strip()
    if not name.strip("."):  # "", "." and ".." name no file
        return FALLBACK_FILENAME
    if len(name) > MAX_FILENAME_LENGTH:
        name = _shorten(name)
    return name


def new_object_key(
    owner_id: int,
    content_type: str,
    token: Callable[[], str] = _random_token,
) -> str:
    """Return a fresh, unguessable storage key for an owner's image of `content_type`."""
    try:
        extension = ALLOWED_IMAGE_TYPES[content_type]
    except KeyError:
        raise ValueError(f"not an allowed image type: {content_type!r}") from None
    return f"u/{owner_id}/{token()}{extension}"


def _shorten(name: str) -> str:
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) + 1 > MAX_EXTENSION_LENGTH:
        return name[:MAX_FILENAME_LENGTH].rstrip()
    suffix = dot + extension
    return name[: MAX_FILENAME_LENGTH - len(suffix)].rstrip() + suffix
