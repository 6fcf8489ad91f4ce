"""photo_api.media on real images made with Pillow and pillow-heif: renditions (upright, never enlarged,
without metadata), HEIC, decompression bombs, EXIF metadata, and the ThumbHash port against the reference.
"""

from __future__ import annotations

import base64
import io
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from PIL import Image

from photo_api.media import JPEG, WEBP, ImageTooLargeError, UndecodableImageError, open_image, render
from photo_api.media.thumbhash import aspect_ratio, average_rgba, rgba_to_thumbhash
from tests.images import gif, jpeg, photo_heic, photo_jpeg, png, png_bomb

MAX_PIXELS = 100_000_000
MIB = 1024 * 1024
RED = (255, 0, 0)

# ThumbHashes the reference implementation (the npm package `thumbhash` 0.1.1, Evan Wallace's JavaScript)
# computed for these pictures, each pixel given by a formula so that the test needs no image file.
REFERENCE_VECTORS: dict[str, tuple[int, int, Callable[[int, int], list[int]], str]] = {
    "gradient": (16, 12, lambda x, y: [x * 16, y * 20, 128, 255], "nRcKNZpwd3eAeHiHiHiHiHCAB/eI"),
    "pattern": (
        100,
        75,
        lambda x, y: [(x * x + y * 3) % 256, (x * 5 + y * y) % 256, ((x ^ y) * 3) % 256, 255],
        "3fgFHYKmd3cJUoV3lWaIh0jzxggj",
    ),
    "grey": (4, 4, lambda x, y: [128, 128, 128, 255], "IAgCBwBYUy6HiHh1h0iIWIiPAQAAAAAA"),
    "alpha": (
        9,
        14,
        lambda x, y: [(x * x * 11 + y) % 256, (y * 53 + x * 3) % 256, (x * y * 7 + 5) % 256, (x * 29 + y * 13) % 256],
        "GciFCwQXILMpOUvJjg/DqSdmCLVWfXg=",
    ),
    "portrait": (
        30,
        100,
        lambda x, y: [(255 - y * 2 + x * x) % 256, (x * 8 + y) % 256, (x * y + 3) % 256, 255],
        "nwgGEg4BJkx2dXVmWk/aj30=",
    ),
}


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def is_red(pixel: tuple[int, ...]) -> bool:
    r, g, b = pixel[:3]
    return r > 200 and g < 60 and b < 60


# ---------------------------------------------------------------- ThumbHash


@pytest.mark.parametrize("name", sorted(REFERENCE_VECTORS))
def test_thumbhash_matches_the_reference_implementation(name: str) -> None:
    width, height, pixel, expected = REFERENCE_VECTORS[name]
    rgba = bytes(value for y in range(height) for x in range(width) for value in pixel(x, y))
    assert base64.b64encode(rgba_to_thumbhash(width, height, rgba)).decode() == expected


def test_thumbhash_records_the_average_colour_and_aspect_ratio() -> None:
    picture = Image.new("RGB", (100, 50), (200, 40, 40))
    thumbhash = rgba_to_thumbhash(100, 50, picture.convert("RGBA").tobytes())
    r, g, b, a = average_rgba(thumbhash)
    assert abs(r - 200 / 255) < 0.05 and abs(g - 40 / 255) < 0.05 and abs(b - 40 / 255) < 0.05 and a == 1
    assert aspect_ratio(thumbhash) == pytest.approx(2.0, rel=0.2)
    assert len(thumbhash) <= 25


def test_thumbhash_refuses_inputs_the_reference_refuses() -> None:
    with pytest.raises(ValueError, match="100x100"):
        rgba_to_thumbhash(101, 10, bytes(101 * 10 * 4))
    with pytest.raises(ValueError):
        rgba_to_thumbhash(2, 2, bytes(3))


# ---------------------------------------------------------------- renditions


def test_renditions_fit_their_box_and_keep_the_aspect_ratio() -> None:
    rendered = render(photo_jpeg(3000, 2000), max_pixels=MAX_PIXELS)
    thumb, preview = rendered.renditions["thumb"], rendered.renditions["preview"]
    assert (thumb.width, thumb.height) == (256, 171)
    assert (preview.width, preview.height) == (1440, 960)
    for rendition in (thumb, preview):
        image = decoded(rendition.data)
        assert image.format == "WEBP" and rendition.content_type == "image/webp" and rendition.extension == ".webp"
        assert image.size == (rendition.width, rendition.height)
    assert (rendered.metadata.width, rendered.metadata.height) == (3000, 2000)
    assert 5 <= len(rendered.thumbhash) <= 25


@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [(1, "top_left"), (3, "bottom_right"), (6, "top_right"), (8, "bottom_left"), (2, "top_right")],
)
def test_renditions_are_upright_whatever_the_exif_orientation(orientation: int, red_corner: str) -> None:
    # The stored pixels are 600x400 with a red block at their top-left; the EXIF orientation says how
    # to turn them for display (6: rotate 90 degrees clockwise, so the block ends top-right).
    rendered = render(photo_jpeg(600, 400, orientation=orientation), max_pixels=MAX_PIXELS)
    preview = decoded(rendered.renditions["preview"].data).convert("RGB")
    upright = (400, 600) if orientation in (5, 6, 7, 8) else (600, 400)
    assert preview.size == upright
    assert (rendered.metadata.width, rendered.metadata.height) == upright
    assert rendered.metadata.orientation == orientation
    w, h = preview.size
    corners = {"top_left": (5, 5), "top_right": (w - 6, 5), "bottom_left": (5, h - 6), "bottom_right": (w - 6, h - 6)}
    assert [name for name, at in corners.items() if is_red(preview.getpixel(at))] == [red_corner]


def test_small_pictures_are_never_enlarged() -> None:
    rendered = render(photo_jpeg(200, 120), max_pixels=MAX_PIXELS)
    assert (rendered.renditions["preview"].width, rendered.renditions["preview"].height) == (200, 120)
    assert (rendered.renditions["thumb"].width, rendered.renditions["thumb"].height) == (200, 120)
    tiny = render(jpeg(16, 16), max_pixels=MAX_PIXELS)
    assert {(r.width, r.height) for r in tiny.renditions.values()} == {(16, 16)}


@pytest.mark.parametrize("encoding", [WEBP, JPEG], ids=["webp", "jpeg"])
def test_renditions_carry_no_exif_or_xmp(encoding: object) -> None:
    original = photo_jpeg(
        800, 600, orientation=6, taken="2026:05:01 14:03:22", gps=(37.5665, 126.978), make="Apple", model="iPhone 15"
    )
    assert b"Exif" in original and b"iPhone 15" in original
    rendered = render(original, max_pixels=MAX_PIXELS, encoding=encoding)  # type: ignore[arg-type]
    for rendition in rendered.renditions.values():
        image = decoded(rendition.data)
        assert len(image.getexif()) == 0, rendition.name
        assert not {"exif", "xmp", "XML:com.adobe.xmp"} & set(image.info), image.info.keys()
        assert b"Exif" not in rendition.data and b"iPhone" not in rendition.data and b"Apple" not in rendition.data


def test_heic_gets_renditions_and_metadata() -> None:
    original = photo_heic(1600, 1200, taken="2026:03:04 05:06:07", offset="-05:00", make="Apple", model="iPhone 15")
    rendered = render(original, max_pixels=MAX_PIXELS)
    preview = decoded(rendered.renditions["preview"].data).convert("RGB")
    assert preview.size == (1440, 1080) and is_red(preview.getpixel((5, 5)))
    assert rendered.renditions["thumb"].width == 256
    assert rendered.metadata.taken_at == datetime(2026, 3, 4, 10, 6, 7, tzinfo=UTC)
    assert rendered.metadata.taken_at_offset_minutes == -300
    assert (rendered.metadata.camera_make, rendered.metadata.camera_model) == ("Apple", "iPhone 15")


@pytest.mark.parametrize("original", [png(40, 30), gif(8, 8)], ids=["png", "gif"])
def test_other_formats_get_renditions(original: bytes) -> None:
    rendered = render(original, max_pixels=MAX_PIXELS)
    assert decoded(rendered.renditions["thumb"].data).format == "WEBP"
    assert rendered.metadata.has_embedded_metadata is False
    assert rendered.metadata.taken_at is None and rendered.metadata.gps_latitude is None


# ---------------------------------------------------------------- limits


def test_a_decompression_bomb_fails_from_its_header_fast_and_small() -> None:
    bomb = png_bomb(50_000, 50_000)  # 2.5 gigapixels declared: 7.5 GB to decode
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError, match="limit"):
            render(bomb, max_pixels=MAX_PIXELS)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, elapsed
    assert peak < 8 * MIB, peak


def test_an_image_over_our_own_limit_is_refused_before_decoding() -> None:
    # 12,000 x 10,000 = 120 megapixels: under Pillow's own hard limit, over ours.
    with pytest.raises(ImageTooLargeError, match="12000x10000"):
        open_image(png_bomb(12_000, 10_000), max_pixels=MAX_PIXELS)


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", photo_jpeg(64, 64)[:400], b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["garbage", "truncated-jpeg", "broken-png"],
)
def test_undecodable_bytes_are_a_media_error(data: bytes) -> None:
    with pytest.raises(UndecodableImageError):
        render(data, max_pixels=MAX_PIXELS)


# ---------------------------------------------------------------- metadata


def test_metadata_with_an_offset_is_stored_as_utc_with_the_offset() -> None:
    data = photo_jpeg(
        640, 480, taken="2026:05:01 14:03:22", offset="+09:00", gps=(37.5665, -122.4194), make=" Canon ", model="EOS R5"
    )
    meta = render(data, max_pixels=MAX_PIXELS).metadata
    assert meta.taken_at == datetime(2026, 5, 1, 5, 3, 22, tzinfo=UTC)
    assert meta.taken_at_offset_minutes == 540
    assert (meta.camera_make, meta.camera_model) == ("Canon", "EOS R5")
    assert meta.gps_latitude == pytest.approx(37.5665, abs=1e-4)
    assert meta.gps_longitude == pytest.approx(-122.4194, abs=1e-4)
    assert meta.has_embedded_metadata is True


def test_metadata_without_an_offset_keeps_the_cameras_clock() -> None:
    meta = render(photo_jpeg(64, 48, taken="2026:05:01 14:03:22"), max_pixels=MAX_PIXELS).metadata
    assert meta.taken_at == datetime(2026, 5, 1, 14, 3, 22, tzinfo=UTC)
    assert meta.taken_at_offset_minutes is None
    assert meta.gps_latitude is None and meta.camera_make is None


@pytest.mark.parametrize("taken", ["0000:00:00 00:00:00", "yesterday", "2026:13:40 99:00:00"])
def test_a_meaningless_date_is_no_date(taken: str) -> None:
    assert render(photo_jpeg(64, 48, taken=taken), max_pixels=MAX_PIXELS).metadata.taken_at is None
