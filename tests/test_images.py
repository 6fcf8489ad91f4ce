"""Image sniffing, filename sanitising and object key naming."""

from __future__ import annotations

import base64
import re
import struct
import unicodedata
import zlib

import pytest

from photo_api.images import (
    ALLOWED_IMAGE_TYPES,
    SNIFF_BYTES,
    new_object_key,
    sanitize_filename,
    sniff_image_type,
)
from tests.images import heif_header, jpeg, photo_heic


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


# A complete 1x1 8-bit greyscale PNG: signature, IHDR, one scanline (filter 0, one pixel), IEND.
PNG_1X1 = (
    b"\x89PNG\r\n\x1a\n"
    + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    + png_chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    + png_chunk(b"IEND", b"")
)
# The classic 43-byte transparent 1x1 GIF89a.
GIF89_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# The same image without the graphic control extension, as GIF87a allows.
GIF87_1X1 = (
    b"GIF87a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# SOI, then a JFIF APP0 segment (version 1.1, no density units, 1:1, no thumbnail).
JPEG_HEADER = b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
# A 1x1 lossless WebP (RIFF container, VP8L chunk), the one browsers' feature tests decode.
WEBP_1X1 = base64.b64decode("UklGRhoAAABXRUJQVlA4TA0AAAAvAAAAEAcQERGIiP4HAA==")

IMAGES = [
    (jpeg(), "image/jpeg"),
    (jpeg(comment=b"x" * 60_000), "image/jpeg"),  # metadata before the frame header is skipped
    (PNG_1X1, "image/png"),
    (GIF89_1X1, "image/gif"),
    (GIF87_1X1, "image/gif"),
    (WEBP_1X1, "image/webp"),
    (photo_heic(64, 48), "image/heic"),  # as pillow-heif (libheif) writes it: major brand heic
    (heif_header(b"mif1", (b"mif1", b"heic")), "image/heic"),  # HEVC-coded, declared by a compatible brand
    (heif_header(), "image/heif"),  # the generic image brand only
]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking every CRC."""
    chunks = []
    offset = len(b"\x89PNG\r\n\x1a\n")
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def test_fixtures_are_well_formed() -> None:
    # Guards the hand-built bytes, so the sniffing tests run against real file layouts.
    chunks = png_chunks(PNG_1X1)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    assert zlib.decompress(chunks[1][1]) == b"\x00\x00"  # filter byte + one grey pixel
    assert struct.unpack("<I", WEBP_1X1[4:8])[0] == len(WEBP_1X1) - 8
    assert WEBP_1X1[12:16] == b"VP8L"
    assert len(GIF89_1X1) == 43 and GIF89_1X1.endswith(b";")
    assert JPEG_HEADER[2:4] == b"\xff\xe0" and struct.unpack(">H", JPEG_HEADER[4:6])[0] == len(JPEG_HEADER) - 4


@pytest.mark.parametrize(("data", "content_type"), IMAGES)
def test_sniffs_real_images(data: bytes, content_type: str) -> None:
    assert sniff_image_type(data) == content_type
    assert sniff_image_type(data[:SNIFF_BYTES]) == content_type


@pytest.mark.parametrize(
    "data",
    [
        heif_header(b"avif", (b"mif1", b"avif")),  # AVIF: HEIF's container, a codec we do not take
        heif_header(b"mif1", (b"mif1", b"avis")),
        heif_header(b"isom", (b"isom", b"mp41")),  # an MP4 video
        heif_header(then=b"moov"),  # a HEIF sequence (a video track), not a still image
        heif_header(then=b"free"),
        heif_header()[:20],  # cut inside the ftyp box
        b"\x00\x00\x00\x08ftyp" + b"\x00" * 40,  # an ftyp box too short to hold a brand
    ],
)
def test_refuses_iso_media_that_is_not_a_heif_still(data: bytes) -> None:
    assert sniff_image_type(data) is None


def test_every_allowed_type_is_sniffable() -> None:
    assert {content_type for _, content_type in IMAGES} == set(ALLOWED_IMAGE_TYPES)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is a text file that someone named photo.jpg\n",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"BM\x3a\x00\x00\x00\x00\x00\x00\x00",  # BMP
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # a RIFF file that is audio
        b"GIF88a\x01\x00\x01\x00",
        b"\xff\xd8",  # too short to be sure
        PNG_1X1[:7],
        b"x" + PNG_1X1,  # the signature must be at the very start
        b"\x00" * SNIFF_BYTES,
        # A signature followed by something else than that format's header:
        PNG_1X1[:8],  # the bare PNG signature
        PNG_1X1[:8] + png_chunk(b"tEXt", b"x")[:21],  # a first chunk that is not IHDR
        b"GIF89a<html><script>alert(1)</script></html>",  # the screen descriptor is HTML
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00<script>",  # a plausible descriptor, then no GIF block
        JPEG_HEADER,  # metadata and then nothing: no frame header
        JPEG_HEADER + b"\xff\xda\x00\x08" + b"<html>",  # a scan before any frame header
        b"\xff\xd8\xff\xfe\x00\x10<html><body>",  # a comment cut short
        b"\xff\xd8<html>" + b"x" * 40,  # no marker after SOI
        b"RIFF\x24\x00\x00\x00WEBPVP8 \x0a\x00\x00\x00<html>\x00\x00\x00\x00",  # no VP8 start code
        b"RIFF\x24\x00\x00\x00WEBPJUNK\x0a\x00\x00\x00<html><body>",  # no image chunk
        jpeg()[: jpeg().index(b"\xff\xc0")] + b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x00\x01",  # width 0
    ],
)
def test_rejects_non_images(data: bytes) -> None:
    assert sniff_image_type(data) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("photo.jpg", "photo.jpg"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\me\\cat.jpg", "cat.jpg"),
        ("../../secret.png", "secret.png"),
        ("a/b\\c/d.gif", "d.gif"),
        ("..", "upload"),
        (".", "upload"),
        ("photos/..", "upload"),
        ("dir/", "upload"),
        ("  spaced name.png \t", "spaced name.png"),
        ("na\x00me\x1f\x7f.jpg", "name.jpg"),
        ("line\nbreak.jpg", "linebreak.jpg"),
        ("evil\u202egpj.exe", "evilgpj.exe"),
        ("e\u0301te\u0301.jpg", "\u00e9t\u00e9.jpg"),  # decomposed accents become NFC
        ("사진.jpg", "사진.jpg"),
        ("", "upload"),
        ("   ", "upload"),
        ("\x00\x01\x02", "upload"),
        (None, "upload"),
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_long_names_keep_their_extension() -> None:
    name = sanitize_filename("a" * 300 + ".jpeg")
    assert len(name) == 255
    assert name == "a" * 250 + ".jpeg"


def test_long_names_count_characters_not_bytes() -> None:
    name = sanitize_filename("사" * 300 + ".png")
    assert name == "사" * 251 + ".png"


def test_long_names_without_an_extension_are_cut() -> None:
    assert sanitize_filename("b" * 300) == "b" * 255


def test_implausibly_long_extensions_are_cut_like_the_rest() -> None:
    name = sanitize_filename("x." + "y" * 298)
    assert name == ("x." + "y" * 298)[:255]


def test_names_at_the_limit_are_untouched() -> None:
    name = "c" * 251 + ".gif"
    assert sanitize_filename(name) == name


def test_sanitized_names_hold_no_control_characters() -> None:
    raw = "".join(chr(code) for code in range(0x20)) + "ok.png" + "\x7f\x85"
    name = sanitize_filename(raw)
    assert name == "ok.png"
    assert not any(unicodedata.category(char) == "Cc" for char in name)


@pytest.mark.parametrize(("content_type", "extension"), list(ALLOWED_IMAGE_TYPES.items()))
def test_object_key_shape(content_type: str, extension: str) -> None:
    assert new_object_key(7, content_type, token=lambda: "abc") == f"u/7/abc{extension}"


def test_object_keys_are_random_by_default() -> None:
    first = new_object_key(7, "image/jpeg")
    second = new_object_key(7, "image/jpeg")
    assert re.fullmatch(r"u/7/[0-9a-f]{32}\.jpg", first)
    assert first != second


def test_object_key_refuses_other_types() -> None:
    with pytest.raises(ValueError):
        new_object_key(7, "image/svg+xml")
