"""The multipart parser on its own, driven with byte streams that deliver a body the way a socket does."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart
from werkzeug.wsgi import LimitedStream

from photo_api.api.multipart import MAX_BOUNDARY_LENGTH, MAX_BUFFER_BYTES, Part, form_boundary, iter_parts
from photo_api.errors import BadRequestError, PayloadTooLargeError
from photo_api.storage import CHUNK_SIZE

BOUNDARY = "test-boundary-7d41402abc4b2a76"
MAX_PARTS = 8
# Sizes of the socket reads a body may arrive in: single bytes, odd splits, and whole chunks.
READ_SIZES = [1, 2, 3, 7, 61, 1000, CHUNK_SIZE]


def part(name: str | None, value: bytes, filename: str | None = None) -> bytes:
    """One multipart part, boundary line included; `name=None` leaves the name out."""
    disposition = "form-data" + (f'; name="{name}"' if name is not None else "")
    disposition += f'; filename="{filename}"' if filename is not None else ""
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def body(*parts: bytes) -> bytes:
    """A complete body made of `parts`."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


class Trickle(io.RawIOBase):
    """A body arriving at most `step` bytes per read, as a socket delivers it; counts what was read."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self._step = step
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        out = self.data[self.bytes_read : self.bytes_read + min(len(buffer), self._step)]
        buffer[: len(out)] = out
        self.bytes_read += len(out)
        return len(out)


class Segments(io.RawIOBase):
    """A body arriving in the given segments, one per read (each shorter than what the parser asks for)."""

    def __init__(self, segments: list[bytes]) -> None:
        self._segments = list(segments)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        out = self._segments.pop(0) if self._segments else b""
        assert len(out) <= len(buffer)
        buffer[: len(out)] = out
        return len(out)


class Endless(io.RawIOBase):
    """A body that never ends: `head`, then `filler` repeated forever; counts what was read."""

    def __init__(self, head: bytes, filler: bytes) -> None:
        self._pending = head
        self._filler = filler
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any, /) -> int:
        if not self._pending:
            self._pending = self._filler * (len(buffer) // len(self._filler) + 1)
        out, self._pending = self._pending[: len(buffer)], self._pending[len(buffer) :]
        buffer[: len(out)] = out
        self.bytes_read += len(out)
        return len(out)


def parts_of(stream: io.RawIOBase, boundary: str = BOUNDARY, **limits: int) -> Iterator[Part]:
    limits.setdefault("max_parts", MAX_PARTS)
    return iter_parts(stream, boundary.encode(), **limits)


def read_all(p: Part, read_size: int) -> bytes:
    """The data of part `p`, read `read_size` bytes at a time."""
    data = b""
    while chunk := p.read(read_size):
        assert len(chunk) <= read_size
        data += chunk
    return data


def everything(stream: io.RawIOBase, read_size: int = CHUNK_SIZE) -> list[tuple[str, str | None, bytes]]:
    """(name, filename, data) of every part, each read `read_size` bytes at a time."""
    return [(p.name, p.filename, read_all(p, read_size)) for p in parts_of(stream)]


# A file whose bytes look like the start of a boundary more than once: only the real one may end it.
TRICKY_FILE = (
    b"\x89PNG\r\n\x1a\n"
    + f"\r\n--{BOUNDARY[:-1]}".encode()
    + b"\r\n--"
    + f"--{BOUNDARY}".encode()[:-3]
    + bytes(range(256)) * 40
    + b"\r\n-"
)
FORM = body(
    part("title", "Über den Wolken".encode()),
    part("file", TRICKY_FILE, filename="a.png"),
    part("description", b""),
    part("album_id", b"3"),
)
EXPECTED = [
    ("title", None, "Über den Wolken".encode()),
    ("file", "a.png", TRICKY_FILE),
    ("description", None, b""),
    ("album_id", None, b"3"),
]


@pytest.mark.parametrize("step", READ_SIZES)
def test_parts_are_the_same_however_the_body_is_split(step: int) -> None:
    for read_size in (1, 5, CHUNK_SIZE):
        assert everything(Trickle(FORM, step), read_size) == EXPECTED


def test_every_split_point_of_a_boundary_between_two_reads() -> None:
    for cut in range(1, len(FORM)):
        assert everything(Segments([FORM[:cut], FORM[cut:]])) == EXPECTED, cut


@pytest.mark.parametrize("last", [b"", b"3", b"ends with a dash -", b"--", b"\r\n"])
def test_a_read_ending_between_the_closing_dashes_adds_nothing_to_the_last_part(last: bytes) -> None:
    """werkzeug 3.1.9 alone appends a CR here (pallets/werkzeug#3285): the parser holds such a dash back."""
    form = body(part("file", b"data", filename="f"), part("title", last))
    cut = form.rindex(b"--\r\n") + 1  # between the two dashes that close the body
    assert everything(Segments([form[:cut], form[cut:]])) == [("file", "f", b"data"), ("title", None, last)]


def test_a_body_ending_between_the_closing_dashes_is_malformed() -> None:
    form = body(part("title", b"t"))
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(Segments([form[: form.rindex(b"--\r\n") + 1]]))


def test_body_encoded_by_werkzeug_reads_back() -> None:
    image = bytes(range(256)) * 300
    fields = MultiDict(
        [
            ("title", "t"),
            ("file", FileStorage(io.BytesIO(image), filename="x.jpg", content_type="image/jpeg")),
            ("note", "after"),
        ]
    )
    boundary, data = encode_multipart(fields, boundary="werkzeug-boundary-0123456789")
    got = [(p.name, p.filename, p.read()) for p in parts_of(Trickle(data, 1000), boundary)]
    assert got == [("title", None, b"t"), ("file", "x.jpg", image), ("note", None, b"after")]


def test_read_returns_at_most_what_was_asked() -> None:
    data = b"0123456789" * 1000
    file_part = next(parts_of(Trickle(body(part("file", data, filename="f")), 4096)))
    assert file_part.read(0) == b""
    first = file_part.read(3)
    assert first == b"012"
    sizes = []
    while chunk := file_part.read(1000):
        sizes.append(len(chunk))
        first += chunk
    assert first == data
    assert max(sizes) <= 1000
    assert file_part.read(10) == b"" and file_part.read() == b""


def test_a_field_with_an_empty_filename_is_a_file() -> None:
    assert everything(Trickle(body(part("file", b"x", filename="")), CHUNK_SIZE)) == [("file", "", b"x")]


def test_an_empty_form_has_no_parts() -> None:
    assert everything(Trickle(body(), 10)) == []


def test_the_body_is_read_only_as_the_parts_are_consumed() -> None:
    big = b"\xff" * (50 * CHUNK_SIZE)
    stream = Trickle(body(part("file", big, filename="big.jpg"), part("title", b"t")), CHUNK_SIZE)
    parts = parts_of(stream)
    file_part = next(parts)
    assert file_part.read(10) == b"\xff" * 10
    assert stream.bytes_read <= 2 * CHUNK_SIZE
    # Asking for the next part skips the rest of this one, a chunk at a time.
    title = next(parts)
    assert (title.name, title.read()) == ("title", b"t")
    assert file_part.read(10) == b""  # skipped for good
    assert list(parts) == []
    assert stream.bytes_read == len(stream.data)


def test_drain_skips_the_rest_of_a_part() -> None:
    parts = parts_of(Trickle(body(part("a", b"x" * 100_000), part("b", b"y")), 333))
    a = next(parts)
    a.drain()
    assert a.read() == b""
    assert next(parts).read() == b"y"


def test_a_part_without_a_name_is_skipped() -> None:
    form = body(part(None, b"anonymous"), part("file", b"data", filename="f.png"), part("", b"empty name"))
    assert everything(Trickle(form, 7)) == [("file", "f.png", b"data")]


def test_a_part_without_content_disposition_is_malformed() -> None:
    form = f"--{BOUNDARY}\r\nX-No-Disposition: 1\r\n\r\nvalue\r\n--{BOUNDARY}--\r\n".encode()
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(Trickle(form, 100))


def test_more_parts_than_allowed_is_malformed() -> None:
    allowed = body(*[part(f"f{n}", b"x") for n in range(MAX_PARTS)])
    assert len(everything(Trickle(allowed, 100))) == MAX_PARTS
    # Parts without a name count too: they cost the decoder the same.
    too_many = body(*[part(None, b"x") for _ in range(MAX_PARTS)], part("file", b"data", filename="f"))
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(Trickle(too_many, 100))


def test_a_preamble_that_never_ends_stops_at_the_buffer_limit() -> None:
    stream = Endless(b"", b"no boundary here " * 64)
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(stream)
    assert stream.bytes_read <= MAX_BUFFER_BYTES + CHUNK_SIZE


def test_a_header_block_that_never_ends_stops_at_the_buffer_limit() -> None:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"\r\n'.encode()
    stream = Endless(head, b"X-Filler: " + b"a" * 100 + b"\r\n")
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(stream)
    assert stream.bytes_read <= MAX_BUFFER_BYTES + 2 * CHUNK_SIZE


def test_a_smaller_buffer_limit_is_honoured() -> None:
    stream = Endless(b"", b"z" * 1024)
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        list(parts_of(stream, max_buffer_bytes=4096, chunk_size=1024))
    assert stream.bytes_read <= 4096 + 1024


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(len(f"--{BOUNDARY}--\r\n") + 2, id="before-the-closing-boundary"),
        pytest.param(len(TRICKY_FILE) // 2 + 200, id="inside-the-file"),
        pytest.param(len(FORM) - 20, id="inside-a-field-after-the-file"),
    ],
)
def test_a_body_cut_short_is_malformed(cut: int) -> None:
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(Trickle(FORM[:-cut], 500))


def test_garbage_is_malformed() -> None:
    with pytest.raises(BadRequestError, match="Malformed multipart body"):
        everything(Trickle(b"garbage without any boundary", 100))


def test_a_body_past_the_streams_limit_is_413_while_the_part_is_read() -> None:
    big = b"\x00" * (40 * CHUNK_SIZE)
    raw = Trickle(body(part("title", b"t"), part("file", big, filename="big.bin")), CHUNK_SIZE)
    limit = 10 * CHUNK_SIZE
    parts = parts_of(LimitedStream(raw, limit, is_max=True))
    assert next(parts).read() == b"t"
    file_part = next(parts)
    received = 0
    with pytest.raises(PayloadTooLargeError, match="The request body is too large"):
        while chunk := file_part.read(CHUNK_SIZE):
            received += len(chunk)
    assert limit - 2 * CHUNK_SIZE < received <= limit
    assert raw.bytes_read <= limit


def test_skipping_a_part_past_the_streams_limit_is_413() -> None:
    raw = Trickle(body(part("junk", b"\x00" * (40 * CHUNK_SIZE), filename="j.bin"), part("title", b"t")), CHUNK_SIZE)
    parts = parts_of(LimitedStream(raw, 10 * CHUNK_SIZE, is_max=True))
    assert next(parts).name == "junk"  # not read: moving on skips it, and the limit still applies
    with pytest.raises(PayloadTooLargeError):
        next(parts)
    assert raw.bytes_read <= 10 * CHUNK_SIZE


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        (f"multipart/form-data; boundary={BOUNDARY}", BOUNDARY),
        (f'Multipart/Form-Data; charset=utf-8; boundary="{BOUNDARY}"', BOUNDARY),
        ("multipart/form-data; boundary=" + "b" * MAX_BOUNDARY_LENGTH, "b" * MAX_BOUNDARY_LENGTH),
    ],
)
def test_boundary_of_a_form_data_body(content_type: str, boundary: str) -> None:
    assert form_boundary(content_type) == boundary.encode()


@pytest.mark.parametrize("content_type", [None, "", "application/json", "multipart/mixed; boundary=x", "image/png"])
def test_other_content_types_are_400(content_type: str | None) -> None:
    with pytest.raises(BadRequestError) as caught:
        form_boundary(content_type)
    assert caught.value.detail == "Content-Type must be multipart/form-data"


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "b" * (MAX_BOUNDARY_LENGTH + 1),
        "multipart/form-data; boundary*=UTF-8''%C3%BCber",
    ],
)
def test_a_missing_long_or_non_ascii_boundary_is_400(content_type: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        form_boundary(content_type)
    assert caught.value.detail == "multipart/form-data needs a boundary of 1 to 200 ASCII characters"
