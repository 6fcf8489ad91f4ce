"""multipart/form-data as parts pulled off a body stream a chunk at a time, over werkzeug's sans-IO decoder.

No Flask here: the caller passes the Content-Type header and a readable stream (the view passes
`request.stream`, which werkzeug stops at the request's size limit). A part's data is never held
whole: `Part.read(n)` pulls it from the stream as the consumer asks. A malformed body is BadRequestError
(400); a body past the stream's limit is PayloadTooLargeError (413), raised as soon as the read passes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, Event, File, MultipartDecoder, NeedData, Preamble
from werkzeug.sansio.multipart import Field as FormField

from ..errors import BadRequestError, PayloadTooLargeError
from ..storage import CHUNK_SIZE

FORM_DATA = "multipart/form-data"
# RFC 2046 allows 70 characters, but real clients (werkzeug's test client among them) sometimes send a
# few more; the cap only keeps the decoder's boundary search cheap.
MAX_BOUNDARY_LENGTH = 200
# What the decoder may hold while looking for a boundary or the end of a part's headers; part data
# passes through in chunks, so only a preamble or a header block that never ends could reach this.
MAX_BUFFER_BYTES = 4 * CHUNK_SIZE
MALFORMED = "Malformed multipart body"


class ByteSource(Protocol):
    """What the body stream must offer: `read(n)`, returning b"" at its end."""

    def read(self, size: int = -1, /) -> bytes: ...


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data body from its Content-Type header; BadRequestError (400) otherwise."""
    mimetype, params = parse_options_header(content_type)
    if mimetype.lower() != FORM_DATA:
        raise BadRequestError(f"Content-Type must be {FORM_DATA}")
    boundary = params.get("boundary", "")
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH or not boundary.isascii():
        raise BadRequestError(f"{FORM_DATA} needs a boundary of 1 to {MAX_BOUNDARY_LENGTH} ASCII characters")
    return boundary.encode("ascii")


class _Events:
    """Decoder events pulled off the stream, which is read a chunk at a time as they are needed."""

    def __init__(self, stream: ByteSource, boundary: bytes, *, max_parts: int, max_buffer_bytes: int, chunk_size: int):
        self._stream = stream
        self._chunk_size = chunk_size
        self._decoder = MultipartDecoder(boundary, max_buffer_bytes, max_parts=max_parts)
        # werkzeug (3.1.9 and before) adds the CR of the closing delimiter to the last part when the data
        # it was given ends between the delimiter's two final dashes (pallets/werkzeug#3285); with 64 KiB
        # reads that is 1 body length in 65,536, every time. Such a dash waits for the next read.
        self._split_close = b"--" + boundary + b"-"
        self._tail = b""
        self._held = b""

    def next(self) -> Event:
        """The next event, reading more of the body as needed; never NeedData."""
        while True:
            try:
                event = self._decoder.next_event()
            except (ValueError, RequestEntityTooLarge):  # garbled framing, or more parts than allowed
                raise BadRequestError(MALFORMED) from None
            if not isinstance(event, NeedData):
                return event
            data = self._read()
            try:
                # None is the end of the body; the decoder then raises if it is incomplete.
                self._decoder.receive_data(data)
            except RequestEntityTooLarge:  # a preamble or header block that never ends
                raise BadRequestError(MALFORMED) from None

    def _read(self) -> bytes | None:
        """The next data for the decoder (b"" while a dash waits for what follows); None at the end of the body."""
        try:
            chunk = self._stream.read(self._chunk_size)
        except RequestEntityTooLarge:  # past the stream's limit (request.max_content_length)
            raise PayloadTooLargeError("The request body is too large") from None
        if not chunk:
            data, self._held = self._held, b""
            return data or None
        data, self._held = self._held + chunk, b""
        keep = len(self._split_close)
        recent = data if len(data) >= keep else self._tail + data  # no copy of a whole chunk per read
        if recent.endswith(self._split_close):
            data, self._held = data[:-1], data[-1:]
            recent = recent[:-1]
        self._tail = recent[-keep:]
        return data


class Part:
    """One named part: `name`, `filename` (None for a plain field) and its data as a file-like `read(n)`."""

    def __init__(self, events: _Events, name: str, filename: str | None, chunk_size: int) -> None:
        self.name = name
        self.filename = filename
        self._events = events
        self._chunk_size = chunk_size
        self._chunk = b""
        self._pos = 0
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes of the part (all of the rest for a negative size); b"" at its end."""
        if size < 0:
            return b"".join(iter(lambda: self.read(self._chunk_size), b""))
        if size == 0:
            return b""
        while self._pos >= len(self._chunk):
            if self._done:
                return b""
            event = self._events.next()
            if not isinstance(event, Data):
                raise BadRequestError(MALFORMED)
            self._chunk, self._pos, self._done = event.data, 0, not event.more_data
        out = self._chunk[self._pos : self._pos + size]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        """Skip whatever is left of the part."""
        while self.read(self._chunk_size):
            pass


def iter_parts(
    stream: ByteSource,
    boundary: bytes,
    *,
    max_parts: int,
    max_buffer_bytes: int = MAX_BUFFER_BYTES,
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[Part]:
    """The named parts of a multipart/form-data body, in order, read from `stream` only as they are consumed.

    A part is valid until the next one is asked for: whatever the consumer did not read of it is then
    skipped. A part without a name is no form field (RFC 7578 §4.2) and is skipped too; more than
    `max_parts` parts (named or not) is a malformed body.
    """
    events = _Events(stream, boundary, max_parts=max_parts, max_buffer_bytes=max_buffer_bytes, chunk_size=chunk_size)
    part: Part | None = None
    while True:
        if part is not None:
            part.drain()
        event = events.next()
        if isinstance(event, Epilogue):
            return
        if isinstance(event, Preamble):
            continue
        assert isinstance(event, FormField | File), event  # a part's Data events are read through its Part
        part = Part(events, event.name, event.filename if isinstance(event, File) else None, chunk_size)
        if event.name:
            yield part
