"""Metadata removal (photo_api/media/strip.py): nothing of EXIF/XMP/GPS/comments is left, pixels are identical.

Pure bytes in, bytes out; the HTTP side (shares without metadata) is in tests/test_share_privacy.py.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from photo_api.media.strip import StripError, UnstrippableError, minimal_exif, strip
from tests.images import GPS_IFD, exif_block, gif, jpeg, photo_heic, photo_jpeg, photo_pixels, webp

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><gps>37.5665N</gps></rdf:RDF></x:xmpmeta>'
GPS_PHOTO = {"gps": (37.5665, 126.978), "make": "Acme", "model": "Phone 9", "taken": "2026:05:01 14:03:22"}


def pixels(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.mode, image.size, image.tobytes()


def jpeg_with_everything(orientation: int | None = None) -> bytes:
    """A camera-like JPEG: EXIF with GPS, XMP, an ICC profile, a comment, and a trailer after the image."""
    out = io.BytesIO()
    icc = _srgb()
    photo_pixels(64, 48).save(
        out,
        "JPEG",
        quality=90,
        exif=exif_block(orientation=orientation, **GPS_PHOTO).tobytes(),
        icc_profile=icc,
        xmp=XMP,
        comment=b"shot at home",
    )
    return out.getvalue() + b"MOTION-PHOTO-VIDEO-TRAILER"


def _srgb() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_a_jpeg_loses_exif_gps_xmp_comment_and_trailer_but_keeps_icc_and_pixels() -> None:
    original = jpeg_with_everything()
    stripped = strip(original, "image/jpeg")
    assert b"Exif\x00\x00" not in stripped and b"xmpmeta" not in stripped and b"shot at home" not in stripped
    assert b"TRAILER" not in stripped and stripped.endswith(b"\xff\xd9")
    with Image.open(io.BytesIO(stripped)) as image:
        assert len(image.getexif()) == 0 and not image.getexif().get_ifd(GPS_IFD)
        assert image.info.get("icc_profile") == _srgb()
        assert "comment" not in image.info and "xmp" not in image.info
    assert pixels(stripped) == pixels(original)
    assert strip(stripped, "image/jpeg") is stripped  # nothing left to remove: the same bytes


def test_a_jpeg_taken_sideways_keeps_its_orientation_and_nothing_else() -> None:
    original = jpeg_with_everything(orientation=6)
    stripped = strip(original, "image/jpeg", orientation=6)
    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {0x0112: 6}
        assert not image.getexif().get_ifd(GPS_IFD)
    assert stripped.count(b"Exif\x00\x00") == 1 and len(minimal_exif(6)) == 26
    assert pixels(stripped) == pixels(original)


def test_a_progressive_jpeg_with_several_scans_keeps_every_scan() -> None:
    out = io.BytesIO()
    photo_pixels(80, 60).save(out, "JPEG", progressive=True, exif=exif_block(**GPS_PHOTO).tobytes())
    stripped = strip(out.getvalue(), "image/jpeg")
    assert b"Exif" not in stripped and pixels(stripped) == pixels(out.getvalue())


def test_a_png_loses_exif_and_text_chunks() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "home")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    info.add_text("Software", "x" * 2000, zip=True)
    out = io.BytesIO()
    photo_pixels(32, 24).save(out, "PNG", pnginfo=info, exif=exif_block(**GPS_PHOTO).tobytes())
    original = out.getvalue()
    assert b"eXIf" in original and b"tEXt" in original and b"iTXt" in original and b"zTXt" in original
    stripped = strip(original, "image/png")
    for chunk in (b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"):
        assert chunk not in stripped
    with Image.open(io.BytesIO(stripped)) as image:
        assert len(image.getexif()) == 0 and not image.text
    assert pixels(stripped) == pixels(original)
    with Image.open(io.BytesIO(strip(original, "image/png", orientation=3))) as image:
        assert dict(image.getexif()) == {0x0112: 3}


def test_a_webp_loses_exif_and_xmp_chunks_and_its_flags() -> None:
    out = io.BytesIO()
    photo_pixels(32, 24).save(out, "WEBP", lossless=True, exif=exif_block(**GPS_PHOTO).tobytes(), xmp=XMP)
    original = out.getvalue()
    assert b"EXIF" in original and b"XMP " in original
    stripped = strip(original, "image/webp")
    assert b"EXIF" not in stripped and b"XMP " not in stripped and b"xmpmeta" not in stripped
    assert int.from_bytes(stripped[4:8], "little") == len(stripped) - 8
    assert stripped[12:16] == b"VP8X" and stripped[20] & 0x0C == 0
    with Image.open(io.BytesIO(stripped)) as image:
        assert len(image.getexif()) == 0
    assert pixels(stripped) == pixels(original)
    kept = strip(original, "image/webp", orientation=8)
    assert kept[20] & 0x08 and int.from_bytes(kept[4:8], "little") == len(kept) - 8
    with Image.open(io.BytesIO(kept)) as image:
        assert dict(image.getexif()) == {0x0112: 8}
    assert strip(webp(), "image/webp") == webp()  # a simple WebP has nowhere to keep metadata


def test_a_gif_loses_comments_and_xmp_but_keeps_looping() -> None:
    plain = gif()
    comment = b"\x21\xfe\x05hello\x00"
    xmp = b"\x21\xff\x0bXMP DataXMP" + bytes([len(XMP)]) + XMP + b"\x00"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    header_end = plain.index(b"\x2c") if b"\x21" not in plain else plain.index(b"\x21")
    original = plain[:header_end] + loop + comment + xmp + plain[header_end:]
    stripped = strip(original, "image/gif")
    assert b"hello" not in stripped and b"xmpmeta" not in stripped and b"NETSCAPE2.0" in stripped
    assert pixels(stripped) == pixels(original)


def test_heic_is_not_stripped_and_broken_bytes_are_refused() -> None:
    with pytest.raises(UnstrippableError):
        strip(photo_heic(64, 48, **GPS_PHOTO), "image/heic")
    with pytest.raises(StripError):
        strip(jpeg()[:40], "image/jpeg")
    with pytest.raises(StripError):
        strip(b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "image/png")
    assert strip(photo_jpeg(32, 24), "image/jpeg") != photo_jpeg(32, 24)  # Pillow writes an (empty) EXIF
