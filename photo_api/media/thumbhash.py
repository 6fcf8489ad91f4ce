"""ThumbHash (https://evanw.github.io/thumbhash/): a ~25-byte placeholder of an image, encoded the way the
reference implementation does it (JavaScript/Rust by Evan Wallace), so that any client library decodes it.

Ported rather than taken from PyPI: the Python packages found are unmaintained betas that round halves to
even where the reference rounds them up. tests/test_media.py checks this port against hashes the
reference JavaScript produced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_SIDE = 100  # the reference refuses larger inputs: slower, and no better placeholder


def _round(value: float) -> int:
    # JavaScript's Math.round (halves go up); every value rounded here is non-negative.
    return math.floor(value + 0.5)


def _encode_channel(channel: Sequence[float], w: int, h: int, nx: int, ny: int) -> tuple[float, list[float], float]:
    """DCT of one channel: the DC term, the AC terms normalised to 0..1, and their scale."""
    dc, scale = 0.0, 0.0
    ac: list[float] = []
    for cy in range(ny):
        fy = [math.cos(math.pi / h * cy * (y + 0.5)) for y in range(h)]
        cx = 0
        while cx * ny < nx * (ny - cy):
            fx = [math.cos(math.pi / w * cx * (x + 0.5)) for x in range(w)]
            f = 0.0
            for y in range(h):
                row = y * w
                fyy = fy[y]
                for x in range(w):
                    f += channel[row + x] * fx[x] * fyy
            f /= w * h
            if cx > 0 or cy > 0:
                ac.append(f)
                scale = max(scale, abs(f))
            else:
                dc = f
            cx += 1
    if scale > 0:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return dc, ac, scale


def rgba_to_thumbhash(w: int, h: int, rgba: bytes | Sequence[int]) -> bytes:
    """The ThumbHash of a `w` x `h` RGBA image (at most 100 x 100, RGB not premultiplied)."""
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or len(rgba) != w * h * 4:
        raise ValueError(f"a {w}x{h} RGBA image of at most {MAX_SIDE}x{MAX_SIDE} is needed")
    n = w * h
    avg_r = avg_g = avg_b = avg_a = 0.0
    for i in range(0, n * 4, 4):
        alpha = rgba[i + 3] / 255
        avg_r += alpha / 255 * rgba[i]
        avg_g += alpha / 255 * rgba[i + 1]
        avg_b += alpha / 255 * rgba[i + 2]
        avg_a += alpha
    if avg_a > 0:
        avg_r, avg_g, avg_b = avg_r / avg_a, avg_g / avg_a, avg_b / avg_a

    has_alpha = avg_a < n
    l_limit = 5 if has_alpha else 7  # fewer luminance terms when alpha needs room
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    lum: list[float] = []
    p: list[float] = []
    q: list[float] = []
    a: list[float] = []
    for i in range(0, n * 4, 4):
        # Composite atop the average colour, then to luminance, yellow-blue and red-green.
        alpha = rgba[i + 3] / 255
        r = avg_r * (1 - alpha) + alpha / 255 * rgba[i]
        g = avg_g * (1 - alpha) + alpha / 255 * rgba[i + 1]
        b = avg_b * (1 - alpha) + alpha / 255 * rgba[i + 2]
        lum.append((r + g + b) / 3)
        p.append((r + g) / 2 - b)
        q.append(r - g)
        a.append(alpha)

    l_dc, l_ac, l_scale = _encode_channel(lum, w, h, max(lx, 3), max(ly, 3))
    p_dc, p_ac, p_scale = _encode_channel(p, w, h, 3, 3)
    q_dc, q_ac, q_scale = _encode_channel(q, w, h, 3, 3)
    a_dc, a_ac, a_scale = _encode_channel(a, w, h, 5, 5) if has_alpha else (1.0, [], 1.0)

    is_landscape = w > h
    header24 = (
        _round(63 * l_dc)
        | (_round(31.5 + 31.5 * p_dc) << 6)
        | (_round(31.5 + 31.5 * q_dc) << 12)
        | (_round(31 * l_scale) << 18)
        | (1 << 23 if has_alpha else 0)
    )
    header16 = (
        (ly if is_landscape else lx)
        | (_round(63 * p_scale) << 3)
        | (_round(63 * q_scale) << 9)
        | (1 << 15 if is_landscape else 0)
    )
    out = bytearray([header24 & 255, (header24 >> 8) & 255, header24 >> 16, header16 & 255, header16 >> 8])
    if has_alpha:
        out.append(_round(15 * a_dc) | (_round(15 * a_scale) << 4))
    is_odd = False
    for factor in [*l_ac, *p_ac, *q_ac, *a_ac]:
        nibble = _round(15 * factor)
        if is_odd:
            out[-1] |= nibble << 4
        else:
            out.append(nibble)
        is_odd = not is_odd
    return bytes(out)


def average_rgba(thumbhash: bytes) -> tuple[float, float, float, float]:
    """The average colour a ThumbHash records, each channel 0..1 (what a client shows first)."""
    if len(thumbhash) < 5:
        raise ValueError("a ThumbHash has at least 5 bytes")
    header = thumbhash[0] | (thumbhash[1] << 8) | (thumbhash[2] << 16)
    lum = (header & 63) / 63
    p = ((header >> 6) & 63) / 31.5 - 1
    q = ((header >> 12) & 63) / 31.5 - 1
    alpha = (thumbhash[5] & 15) / 15 if header >> 23 else 1.0
    b = lum - 2 / 3 * p
    r = (3 * lum - b + q) / 2
    g = r - q
    return min(max(r, 0.0), 1.0), min(max(g, 0.0), 1.0), min(max(b, 0.0), 1.0), alpha


def aspect_ratio(thumbhash: bytes) -> float:
    """The approximate width/height ratio a ThumbHash records."""
    if len(thumbhash) < 5:
        raise ValueError("a ThumbHash has at least 5 bytes")
    l_max = 5 if thumbhash[2] & 0x80 else 7
    l_min = thumbhash[3] & 7
    is_landscape = bool(thumbhash[4] & 0x80)
    return (l_max / l_min) if is_landscape else (l_min / l_max)
