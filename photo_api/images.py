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
    # HEIF stills, as phones write them (the replaced service accepted them); browsers other than Safari
    # cannot show them, which is what the renditions are for.
    "image/heic": ".heic",
    "image/heif": ".heif",
}

# How far into a file the type check may read. A JPEG's frame header (what proves it is a picture)
# follows its metadata segments (EXIF, ICC profile, XMP; at most 64 KiB each, a phone writes two or
# three), so the check reads up to 256 KiB; the other formats prove themselves in their first 30 bytes.
SNIFF_BYTES = 256 * 1024

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GIF_SIGNATURES = (b"GIF87a", b"GIF89a")
# PNG IHDR: bit depths allowed for each colour type (PNG spec, 11.2.2).
_PNG_DEPTHS = {0: {1, 2, 4, 8, 16}, 2: {8, 16}, 3: {1, 2, 4, 8}, 4: {8, 16}, 6: {8, 16}}
# JPEG start-of-frame markers (every coding process), which carry the picture's dimensions.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_NO_FRAME = frozenset({0xD8, 0xD9, 0xDA})  # SOI again, EOI or start-of-scan before any frame header
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: markers without a length
# What may follow a GIF's header (and global colour table): an extension, an image, or the trailer.
_GIF_BLOCKS = frozenset({0x21, 0x2C, 0x3B})
_VP8_START_CODE = b"\x9d\x01\x2a"
_VP8L_SIGNATURE = 0x2F
_VP8X_CHUNK_SIZE = 10
# HEIF (ISO/IEC 23008-12) is an ISO base media file: an `ftyp` box of brands first, then for a still
# image the `meta` box that describes its items. HEVC-coded image brands make it HEIC; the generic
# image brand `mif1` alone is plain HEIF. AVIF uses `mif1` too, with its own brand: not accepted.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis"})
_HEIF_BRANDS = frozenset({b"mif1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_FTYP_MIN_SIZE = 16  # size, "ftyp", major brand, minor version
_FTYP_MAX_SIZE = 4096  # a real one lists a handful of brands

MAX_FILENAME_LENGTH = 255
# A longer "extension" is really part of the name; cutting it off whole would lose more than it saves.
MAX_EXTENSION_LENGTH = 16
FALLBACK_FILENAME = "upload"
TOKEN_BYTES = 16  # 128 random bits: object names can be neither guessed nor collide
# Direct uploads land under this prefix until confirm copies them to their final key.
STAGING_PREFIX = "staging/"

_PATH_SEPARATORS = re.compile(r"[/\\]")
# Bidirectional overrides let "x\u202egpj.exe" display as "xexe.jpg"; they have no place in a name.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: control characters (NUL included); Cs: lone surrogates, which cannot be encoded as UTF-8.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs"})


def _random_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def sniff_image_type(head: bytes) -> str | None:
    """The image type that the file's first bytes (up to SNIFF_BYTES) prove, or None.

    A signature alone proves nothing (a GIF header can front an HTML page): each format's header is
    checked far enough to know it describes a picture, without decoding pixels: the PNG IHDR chunk, the
    JPEG frame header behind its metadata segments, the GIF logical screen descriptor and the block
    after it, the WebP VP8/VP8L/VP8X chunk.
    """
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg" if _is_jpeg(head) else None
    if head.startswith(_PNG_SIGNATURE):
        return "image/png" if _is_png(head) else None
    if head.startswith(_GIF_SIGNATURES):
        return "image/gif" if _is_gif(head) else None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp" if _is_webp(head) else None
    if head[4:8] == b"ftyp":
        return _heif_type(head)
    return None


def _u16be(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "big")


def _is_png(head: bytes) -> bool:
    # The first chunk must be IHDR: length 13, then width, height, bit depth, colour type, compression,
    # filter and interlace method.
    if len(head) < 29 or head[8:16] != b"\x00\x00\x00\x0dIHDR":
        return False
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour, compression, filtering, interlace = head[24:29]
    return (
        0 < width < 2**31
        and 0 < height < 2**31
        and depth in _PNG_DEPTHS.get(colour, set())
        and (compression, filtering) == (0, 0)
        and interlace in (0, 1)
    )


def _is_jpeg(head: bytes) -> bool:
    # Walk the marker segments after SOI until the frame header; metadata segments are skipped by length.
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return False
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in _JPEG_NO_FRAME:
            return False
        length = _u16be(head, pos + 2)
        if marker in _JPEG_SOF:
            # length, precision, height (0 allowed: set later by a DNL marker), width, components
            return pos + 10 <= len(head) and length >= 8 and _u16be(head, pos + 7) > 0 and head[pos + 9] > 0
        if length < 2:
            return False
        pos += 2 + length
    return False


def _is_gif(head: bytes) -> bool:
    # Logical screen descriptor: width, height, packed fields, background colour, aspect ratio.
    if len(head) < 14:
        return False
    width, height, packed = int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little"), head[10]
    after = 13 + (3 * 2 ** ((packed & 0x07) + 1) if packed & 0x80 else 0)  # skip the global colour table
    return width > 0 and height > 0 and len(head) > after and head[after] in _GIF_BLOCKS


def _is_webp(head: bytes) -> bool:
    # The first chunk after "WEBP": lossy VP8 (frame tag, then the start code), lossless VP8L (its
    # signature byte) or extended VP8X (a 10-byte header).
    if len(head) < 21:
        return False
    kind, size = head[12:16], int.from_bytes(head[16:20], "little")
    if kind == b"VP8 ":
        return size >= 10 and head[23:26] == _VP8_START_CODE
    if kind == b"VP8L":
        return size >= 5 and head[20] == _VP8L_SIGNATURE
    return kind == b"VP8X" and size == _VP8X_CHUNK_SIZE


def _heif_type(head: bytes) -> str | None:
    # ftyp: size, "ftyp", major brand, minor version, then compatible brands of four bytes each.
    size = int.from_bytes(head[0:4], "big")
    if not _FTYP_MIN_SIZE <= size <= _FTYP_MAX_SIZE or (size - _FTYP_MIN_SIZE) % 4 or len(head) < size + 8:
        return None
    brands = {head[8:12]} | {head[at : at + 4] for at in range(_FTYP_MIN_SIZE, size, 4)}
    if head[size + 4 : size + 8] != b"meta" or int.from_bytes(head[size : size + 4], "big") < 12:
        return None  # no item description: a video or a truncated file, not a still image
    if brands & _HEIC_BRANDS:
        return "image/heic"
    if brands & _HEIF_BRANDS and not brands & _AVIF_BRANDS:
        return "image/heif"
    return None


def rendition_key(owner_id: int, photo_id: int, name: str, extension: str) -> str:
    """The storage key of one rendition of a photo: fixed by the photo, so a job run twice overwrites, never adds."""
    return f"r/{owner_id}/{photo_id}/{name}{extension}"


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


def new_staging_key(owner_id: int, content_type: str, token: Callable[[], str] = _random_token) -> str:
    """A fresh key for the bytes of a direct upload: the only kind of key an upload URL is ever signed for.

    Confirm copies the verified object to a new `new_object_key`, which no URL covers, so nothing a
    client does with its upload URL afterwards can reach the bytes that are served.
    """
    return STAGING_PREFIX + new_object_key(owner_id, content_type, token)


def _shorten(name: str) -> str:
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) + 1 > MAX_EXTENSION_LENGTH:
        return name[:MAX_FILENAME_LENGTH].rstrip()
    suffix = dot + extension
    return name[: MAX_FILENAME_LENGTH - len(suffix)].rstrip() + suffix
