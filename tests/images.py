"""Small but complete image files, built byte by byte, for tests that need real images; and `upload()`.

Each builder returns a file a real decoder opens (checked against Pillow when these were written):
not just the magic number that `sniff_image_type` looks at.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

# --- PNG -----------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC over type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int = 16, height: int = 16, *, text: bytes = b"") -> bytes:
    """An 8-bit RGB PNG with a colour gradient; `text` adds a tEXt chunk (e.g. to make the file larger)."""
    rows = b"".join(
        b"\x00" + bytes(channel for x in range(width) for channel in ((x * 16) % 256, (y * 16) % 256, 128))
        for y in range(height)
    )
    chunks = [png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    if text:
        chunks.append(png_chunk(b"tEXt", b"Comment\x00" + text))
    chunks += [png_chunk(b"IDAT", zlib.compress(rows)), png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


# --- GIF -----------------------------------------------------------------------------------------

GIF_PALETTE = (b"\x00\x00\x00", b"\xff\xff\xff", b"\xff\x00\x00", b"\x00\x00\xff")  # black, white, red, blue


def _gif_lzw_literals(indices: list[int], min_code_size: int) -> bytes:
    # Every pixel is sent as a literal code, with a clear code before the decoder's table would
    # grow past the starting code width: valid LZW that needs no dictionary in the encoder.
    clear, end = 1 << min_code_size, (1 << min_code_size) + 1
    width = min_code_size + 1
    per_clear = (1 << min_code_size) - 2
    codes = []
    for start in range(0, len(indices), per_clear):
        codes.append(clear)
        codes.extend(indices[start : start + per_clear])
    codes.append(end)
    bits = 0
    for n, code in enumerate(codes):
        bits |= code << (n * width)  # GIF packs codes least significant bit first
    return bits.to_bytes((len(codes) * width + 7) // 8, "little")


def gif(width: int = 4, height: int = 4) -> bytes:
    """A GIF89a with a four-colour global palette and a checkered pattern of all four colours."""
    indices = [(x + y) % len(GIF_PALETTE) for y in range(height) for x in range(width)]
    data = _gif_lzw_literals(indices, min_code_size=2)
    blocks = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    # Logical screen: global colour table present (0x80), 8-bit colour resolution (0x70), 4 entries (0x01).
    screen = struct.pack("<HHBBB", width, height, 0xF1, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + b"".join(GIF_PALETTE) + image + b"\x02" + blocks + b"\x00;"


# --- JPEG ----------------------------------------------------------------------------------------

# The largest payload one JPEG marker segment can hold: its 16-bit length counts itself too.
JPEG_MAX_SEGMENT_PAYLOAD = 0xFFFF - 2


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_comment(text: bytes) -> bytes:
    """One COM segment (ignored by decoders): pads a JPEG after its SOI without changing the picture."""
    return _jpeg_segment(0xFE, text)


def jpeg(width: int = 16, height: int = 16, *, comment: bytes = b"") -> bytes:
    """A baseline greyscale JPEG of mid-grey 8x8 blocks, assembled marker by marker.

    One quantisation table; one Huffman table each for DC and AC holding a single 1-bit code ("0")
    for DC difference 0 and for end-of-block. Every block is then two bits, "0" + "0": no DC change
    from the mid-grey level, no AC coefficients.
    """
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    entropy_bits = "00" * blocks
    entropy_bits += "1" * (-len(entropy_bits) % 8)  # pad the last byte with 1-bits, as the standard says
    # All-zero bits with 1-padding never form a 0xFF byte, so no byte stuffing is needed.
    entropy = int(entropy_bits, 2).to_bytes(len(entropy_bits) // 8, "big")
    one_code = bytes([1] + [0] * 15)  # BITS: one code of length 1
    return (
        b"\xff\xd8"
        + _jpeg_segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
        + (jpeg_comment(comment) if comment else b"")
        + _jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))  # DQT: table 0, 8-bit, all ones
        + _jpeg_segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")  # SOF0, 1 component
        + _jpeg_segment(0xC4, b"\x00" + one_code + b"\x00")  # DHT: DC table 0, symbol 0
        + _jpeg_segment(0xC4, b"\x10" + one_code + b"\x00")  # DHT: AC table 0, symbol 0x00 (EOB)
        + _jpeg_segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")  # SOS: component 1 uses tables 0/0, spectral 0-63
        + entropy
        + b"\xff\xd9"
    )


def large_jpeg_chunks(min_size: int) -> Iterator[bytes]:
    """A valid JPEG of at least `min_size` bytes, yielded a segment at a time (never whole in memory).

    The picture is `jpeg()`'s; the size comes from COM segments right after its frame header (SOF0), where
    the type check has already seen that it is a picture.
    """
    base = jpeg()
    sof = base.index(b"\xff\xc0")
    frame_end = sof + 2 + int.from_bytes(base[sof + 2 : sof + 4], "big")
    yield base[:frame_end]
    padding = b"\x00" * JPEG_MAX_SEGMENT_PAYLOAD
    size = len(base)
    while size < min_size:
        segment = jpeg_comment(padding)
        size += len(segment)
        yield segment
    yield base[frame_end:]


def large_jpeg_size(min_size: int) -> int:
    """The exact length of `large_jpeg_chunks(min_size)`."""
    segment = len(jpeg_comment(b"\x00" * JPEG_MAX_SEGMENT_PAYLOAD))
    base = len(jpeg())
    return base + max(0, -(-(min_size - base) // segment)) * segment


# --- WebP ----------------------------------------------------------------------------------------


class _LsbBitWriter:
    """Bits packed least significant first, as VP8L reads them."""

    def __init__(self) -> None:
        self.value = 0
        self.length = 0

    def write(self, value: int, bits: int) -> None:
        assert 0 <= value < (1 << bits)
        self.value |= value << self.length
        self.length += bits

    def to_bytes(self) -> bytes:
        return self.value.to_bytes((self.length + 7) // 8, "little")


def webp(width: int = 4, height: int = 4, rgba: tuple[int, int, int, int] = (200, 30, 60, 255)) -> bytes:
    """A lossless WebP (RIFF + VP8L) of one colour.

    No transforms, no colour cache, no meta prefix codes; each of the five prefix codes is a "simple"
    one-symbol code, so every pixel takes zero bits and the bitstream ends after the codes.
    """
    red, green, blue, alpha = rgba
    bits = _LsbBitWriter()
    bits.write(width - 1, 14)
    bits.write(height - 1, 14)
    bits.write(1 if alpha != 255 else 0, 1)  # alpha_is_used (a hint)
    bits.write(0, 3)  # version
    bits.write(0, 1)  # no transform
    bits.write(0, 1)  # no colour cache
    bits.write(0, 1)  # no meta prefix codes
    for symbol in (green, red, blue, alpha):  # green, red, blue, alpha: one 8-bit literal each
        bits.write(1, 1)  # simple code
        bits.write(0, 1)  # one symbol
        bits.write(1, 1)  # an 8-bit symbol
        bits.write(symbol, 8)
    bits.write(1, 1)  # distance code: simple, one 1-bit symbol (0); never used without back-references
    bits.write(0, 1)
    bits.write(0, 1)
    bits.write(0, 1)
    chunk = b"\x2f" + bits.to_bytes()
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(chunk)) + chunk + b"\x00" * (len(chunk) % 2)
    return b"RIFF" + struct.pack("<I", len(body)) + body


# One of each allowed type: (content type, bytes, file extension).
SAMPLES = {
    "image/jpeg": (jpeg(), ".jpg"),
    "image/png": (png(), ".png"),
    "image/webp": (webp(), ".webp"),
    "image/gif": (gif(), ".gif"),
}


def upload(
    client: FlaskClient,
    headers: dict[str, str],
    data: bytes,
    filename: str = "picture.jpg",
    content_type: str = "application/octet-stream",
    **fields: str,
) -> TestResponse:
    """POST /photos the way browsers and `requests` do: text fields first, then the file part."""
    form: dict[str, Any] = dict(fields)
    form["file"] = (io.BytesIO(data), filename, content_type)
    return client.post("/photos", headers=headers, data=form, content_type="multipart/form-data")


# --- photos with EXIF, made with Pillow (renditions, metadata) --------------------------------------

# EXIF tags the photo builders write (the same numbers photo_api/media/metadata.py reads).
EXIF_MAKE, EXIF_MODEL, EXIF_ORIENTATION = 0x010F, 0x0110, 0x0112
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
EXIF_DATETIME_ORIGINAL, EXIF_OFFSET_TIME_ORIGINAL = 0x9003, 0x9011


def photo_pixels(width: int, height: int) -> Any:
    """A photo-like RGB picture: smooth colour gradients with some detail, and a red mark in the top-left
    corner (so a test can tell which way up a rendition is)."""
    from PIL import Image, ImageDraw

    base = Image.linear_gradient("L").resize((width, height))
    other = Image.radial_gradient("L").resize((width, height))
    picture = Image.merge("RGB", (base, other, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    draw = ImageDraw.Draw(picture)
    step = max(8, width // 40)
    for x in range(0, width, step):  # some edges, so the encoders have detail to keep
        draw.line([(x, 0), (x + height // 3, height)], fill=(40, 40, 40), width=max(1, step // 8))
    draw.rectangle([0, 0, width // 8, height // 8], fill=(255, 0, 0))
    return picture


def exif_block(
    *,
    orientation: int | None = None,
    taken: str | None = None,
    offset: str | None = None,
    gps: tuple[float, float] | None = None,
    make: str | None = None,
    model: str | None = None,
) -> Any:
    """A Pillow Exif with the given tags (`taken` as EXIF writes it, "2026:05:01 14:03:22")."""
    from PIL import Image

    exif = Image.Exif()
    if orientation is not None:
        exif[EXIF_ORIENTATION] = orientation
    if make is not None:
        exif[EXIF_MAKE] = make
    if model is not None:
        exif[EXIF_MODEL] = model
    details = exif.get_ifd(EXIF_IFD)
    if taken is not None:
        details[EXIF_DATETIME_ORIGINAL] = taken
    if offset is not None:
        details[EXIF_OFFSET_TIME_ORIGINAL] = offset
    if gps is not None:
        latitude, longitude = gps
        exif.get_ifd(GPS_IFD).update(
            {1: "N" if latitude >= 0 else "S", 2: _dms(abs(latitude)), 3: "E" if longitude >= 0 else "W"}
        )
        exif.get_ifd(GPS_IFD)[4] = _dms(abs(longitude))
    return exif


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 4)
    return (float(degrees), float(minutes), seconds)


def photo_jpeg(width: int = 640, height: int = 480, *, quality: int = 90, **exif: Any) -> bytes:
    """A JPEG photo of `photo_pixels` with an EXIF block (see `exif_block` for the tags)."""
    out = io.BytesIO()
    photo_pixels(width, height).save(out, "JPEG", quality=quality, exif=exif_block(**exif).tobytes())
    return out.getvalue()


def photo_heic(width: int = 640, height: int = 480, **exif: Any) -> bytes:
    """A HEIC photo (HEVC-coded, pillow-heif's encoder) of `photo_pixels` with an EXIF block."""
    from pillow_heif import from_pillow

    heif = from_pillow(photo_pixels(width, height))
    out = io.BytesIO()
    heif.save(out, quality=80, exif=exif_block(**exif).tobytes())
    return out.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A decompression bomb: a PNG of a few hundred bytes whose header declares `width` x `height` pixels
    (2.5 gigapixels, 7.5 GB decoded, by default). Its data stops after a few rows: never decoded anyway."""
    rows = zlib.compress(b"\x00" + b"\x00" * (width * 3), 9) if width <= 100_000 else b""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def heif_header(
    major: bytes = b"mif1", compatible: tuple[bytes, ...] = (b"mif1", b"miaf"), *, then: bytes = b"meta"
) -> bytes:
    """The start of an ISO BMFF (HEIF) file: an `ftyp` box with these brands, then the header of a `then` box."""
    ftyp = b"ftyp" + major + b"\x00\x00\x00\x00" + b"".join(compatible)
    following = struct.pack(">I", 12 + 21) + then + b"\x00" * 25
    return struct.pack(">I", len(ftyp) + 4) + ftyp + following
