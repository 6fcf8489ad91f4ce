"""The original of a photo without its metadata, losslessly: segments and chunks are dropped, pixels never touched.

What a public share without metadata serves (photo_api/jobs/renditions.py makes it once per photo). The coded
image data is copied byte for byte, so the decoded pixels are identical to the original's.

- JPEG: every APPn segment and COM is dropped except JFIF/JFXX (APP0), the ICC profile (APP2 `ICC_PROFILE`)
  and Adobe's colour transform (APP14), which decoding needs to get the colours right. EXIF and XMP (APP1),
  MPF (APP2), IPTC (APP13) and the rest go, and so does anything after the end-of-image marker (a phone's
  "motion photo" video, or a second JPEG with EXIF of its own).
- PNG: `eXIf`, `tEXt`, `zTXt`, `iTXt` and `tIME` chunks go; colour chunks (iCCP, sRGB, gAMA, cHRM) stay.
- WebP: the `EXIF` and `XMP ` chunks go and the VP8X flags and RIFF size are corrected.
- GIF: comment extensions and application extensions other than looping (NETSCAPE2.0, ANIMEXTS1.0) and
  the ICC profile (ICCRGBG1012) go (XMP lives in one).
- HEIC/HEIF: not handled (metadata items sit inside the `meta` box and are referenced by offset from
  `iloc`; rewriting them is a container rewrite): `strip` raises UnstrippableError and the public gets the
  preview rendition instead.

Orientation: a photo taken sideways stores its pixels sideways and says so in EXIF Orientation; without it
the picture shows rotated. So when the original's orientation is not 1, a minimal EXIF with that one tag
(26 bytes, nothing else) is written back.
"""

from __future__ import annotations

import struct
import zlib

from .errors import MediaError

TAG_ORIENTATION = 0x0112
_TIFF_SHORT = 3


class StripError(MediaError):
    """The bytes do not follow their format's structure far enough to remove metadata safely."""


class UnstrippableError(MediaError):
    """This format is not stripped (HEIC/HEIF): the public gets another picture without metadata instead."""


def minimal_exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block with one tag, Orientation: big-endian header, one IFD, no next IFD."""
    return b"MM\x00\x2a" + struct.pack(">IHHHIHHI", 8, 1, TAG_ORIENTATION, _TIFF_SHORT, 1, orientation, 0, 0)


def strip(data: bytes, content_type: str, orientation: int | None = None) -> bytes:
    """`data` (an image of `content_type`) without its metadata; the same bytes when it had none to lose.

    `orientation` (the original's EXIF Orientation, 1-8) is kept in a minimal EXIF when it is not 1.
    Raises StripError for bytes whose structure is broken, UnstrippableError for HEIC/HEIF.
    """
    keep = orientation if orientation is not None and 2 <= orientation <= 8 else None
    if content_type == "image/jpeg":
        return _strip_jpeg(data, keep)
    if content_type == "image/png":
        return _strip_png(data, keep)
    if content_type == "image/webp":
        return _strip_webp(data, keep)
    if content_type == "image/gif":
        return _strip_gif(data)
    raise UnstrippableError(f"metadata is not removed from {content_type} files")


# ---------------------------------------------------------------- JPEG

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_APP0, _APP2, _APP14, _APP15, _COM = 0xE0, 0xE2, 0xEE, 0xEF, 0xFE
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn have no length


def _keep_jpeg_segment(marker: int, payload: bytes) -> bool:
    if marker == _COM:
        return False
    if not _APP0 <= marker <= _APP15:
        return True  # tables, frame and scan headers: the picture itself
    if marker == _APP0:
        return payload.startswith((b"JFIF\x00", b"JFXX\x00"))
    if marker == _APP2:
        return payload.startswith(b"ICC_PROFILE\x00")
    if marker == _APP14:
        return payload.startswith(b"Adobe")
    return False


def _strip_jpeg(data: bytes, orientation: int | None) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise StripError("not a JPEG stream")
    out = bytearray(b"\xff\xd8")
    exif_at = len(out) if orientation is not None else None  # after SOI, or after JFIF when it comes first
    pos = 2
    size = len(data)
    in_scan = False
    while True:
        if in_scan:
            # Entropy-coded data: a 0xFF is a marker unless followed by 0x00 (stuffing) or RSTn.
            start = pos
            while True:
                pos = data.find(b"\xff", pos)
                if pos < 0 or pos + 1 >= size:
                    raise StripError("the JPEG ends inside its image data")
                following = data[pos + 1]
                if following == 0x00 or following in _STANDALONE or following == 0xFF:
                    pos += 1 if following == 0xFF else 2
                    continue
                break
            out += data[start:pos]
            in_scan = False
        if pos + 2 > size or data[pos] != 0xFF:
            raise StripError("a JPEG marker was expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == _EOI:
            out += b"\xff\xd9"
            break  # what follows the image (a trailer, a video, another picture) is not the picture
        if marker in _STANDALONE or marker == _SOI:
            out += data[pos : pos + 2]
            pos += 2
            continue
        if pos + 4 > size:
            raise StripError("the JPEG ends inside a segment header")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > size:
            raise StripError("a JPEG segment runs past the end of the file")
        payload = data[pos + 4 : end]
        if _keep_jpeg_segment(marker, payload):
            out += data[pos:end]
            if marker == _APP0 and exif_at == 2:
                exif_at = len(out)
        pos = end
        if marker == _SOS:
            in_scan = True
    if exif_at is not None and orientation is not None:
        body = b"Exif\x00\x00" + minimal_exif(orientation)
        out[exif_at:exif_at] = b"\xff\xe1" + (len(body) + 2).to_bytes(2, "big") + body
    result = bytes(out)
    return data if result == data else result


# ---------------------------------------------------------------- PNG

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DROPPED = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"})


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def _strip_png(data: bytes, orientation: int | None) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise StripError("not a PNG stream")
    out = bytearray(_PNG_SIGNATURE)
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise StripError("the PNG ends inside a chunk")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise StripError("a PNG chunk runs past the end of the file")
        if kind not in _PNG_DROPPED:
            out += data[pos:end]
        if kind == b"IHDR" and orientation is not None:
            out += _png_chunk(b"eXIf", minimal_exif(orientation))  # eXIf must precede IDAT
        pos = end
        if kind == b"IEND":
            break  # nothing after IEND belongs to the picture
    result = bytes(out)
    return data if result == data else result


# ---------------------------------------------------------------- WebP

_VP8X_EXIF, _VP8X_XMP = 0x08, 0x04


def _strip_webp(data: bytes, orientation: int | None) -> bytes:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise StripError("not a WebP stream")
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end > len(data):
        raise StripError("the WebP is shorter than its RIFF header says")
    chunks: list[bytearray] = []
    pos = 12
    while pos < riff_end:
        if pos + 8 > riff_end:
            raise StripError("the WebP ends inside a chunk header")
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        end = pos + 8 + length + (length & 1)  # chunks are padded to an even size
        if pos + 8 + length > riff_end:
            raise StripError("a WebP chunk runs past the end of the file")
        if data[pos : pos + 4] not in (b"EXIF", b"XMP "):
            chunks.append(bytearray(data[pos:end]))
        pos = end
    extended = bool(chunks) and chunks[0][:4] == b"VP8X"
    if extended:
        chunks[0][8] &= ~(_VP8X_EXIF | _VP8X_XMP) & 0xFF
        if orientation is not None:
            chunks[0][8] |= _VP8X_EXIF
            exif = minimal_exif(orientation)
            # EXIF comes after the image data in the extended format's chunk order.
            chunks.append(bytearray(b"EXIF" + len(exif).to_bytes(4, "little") + exif + b"\x00" * (len(exif) & 1)))
    body = b"WEBP" + b"".join(chunks)
    result = b"RIFF" + len(body).to_bytes(4, "little") + body
    return data if result == data else result


# ---------------------------------------------------------------- GIF

_GIF_KEPT_APPLICATIONS = (b"NETSCAPE2.0", b"ANIMEXTS1.0", b"ICCRGBG1012")


def _gif_sub_blocks_end(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise StripError("the GIF ends inside a block")
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _strip_gif(data: bytes) -> bytes:
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        raise StripError("not a GIF stream")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0)
    out = bytearray(data[:pos])
    while True:
        if pos >= len(data):
            raise StripError("the GIF ends without its trailer")
        block = data[pos]
        if block == 0x3B:
            out += b"\x3b"
            break
        if block == 0x21:
            if pos + 2 > len(data):
                raise StripError("the GIF ends inside an extension")
            label = data[pos + 1]
            end = _gif_sub_blocks_end(data, pos + 2)
            keep = label not in (0xFE, 0xFF) or (
                label == 0xFF and data[pos + 2] == 11 and data[pos + 3 : pos + 14] in _GIF_KEPT_APPLICATIONS
            )
            if keep:
                out += data[pos:end]
            pos = end
        elif block == 0x2C:
            if pos + 10 > len(data):
                raise StripError("the GIF ends inside an image descriptor")
            local = data[pos + 9]
            start = pos
            pos += 10 + (3 * 2 ** ((local & 0x07) + 1) if local & 0x80 else 0)
            end = _gif_sub_blocks_end(data, pos + 1)  # after the LZW minimum code size
            out += data[start:end]
            pos = end
        else:
            raise StripError("an unknown GIF block")
    result = bytes(out)
    return data if result == data else result
