"""The storage interface every backend implements, and the plain values it exchanges."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import BinaryIO, Protocol, Self

from photo_api.storage.errors import RangeOutsideObjectError

# Large enough to keep syscall and per-chunk overhead low, small enough that a gevent worker
# streaming many downloads at once holds only a little memory per response.
CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class StoredObject:
    """What a backend knows about one stored object."""

    key: str
    size: int
    content_type: str
    etag: str  # hex MD5 of the bytes, without quotes
    last_modified: datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class PresignedUpload:
    """Everything a client needs to PUT bytes straight to storage without our credentials."""

    url: str
    method: str
    headers: dict[str, str]
    expires_at: int  # unix seconds


class ObjectReader:
    """The bytes of an object (or of one range of it) as chunks; close it, or use it as a context manager."""

    def __init__(
        self,
        obj: StoredObject,
        start: int,
        end: int,
        chunks: Iterator[bytes],
        on_close: Callable[[], None],
    ) -> None:
        self.obj = obj
        self.start = start
        self.end = end  # inclusive, like HTTP; start - 1 when nothing is to be read
        self._chunks = chunks
        self._on_close = on_close
        self._closed = False

    @property
    def length(self) -> int:
        """Number of bytes this reader yields."""
        return self.end - self.start + 1

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        """Release the underlying file or connection; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._on_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def resolve_range(byte_range: tuple[int, int | None] | None, size: int) -> tuple[int, int]:
    """Turn an HTTP-style inclusive range into concrete (start, end) offsets for an object of `size` bytes."""
    if byte_range is None:
        return 0, size - 1
    first, last = byte_range
    if first < 0 or (last is not None and last < first):
        # Such a Range header is syntactically invalid and must be ignored by the web layer
        # (RFC 9110 §14.1.1), so reaching here is a caller bug, not a 416.
        raise ValueError(f"invalid byte range {byte_range!r}")
    if first >= size:
        raise RangeOutsideObjectError(size)
    if last is None or last >= size:
        last = size - 1
    return first, last


class Storage(Protocol):
    """An object store: streamed puts and reads, metadata, deletes and presigned uploads."""

    name: str

    def put(
        self,
        key: str,
        stream: BinaryIO,
        *,
        content_type: str,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """Store the stream under `key` in chunks, atomically; more than `max_bytes` raises ObjectTooLargeError."""
        ...

    def copy(self, source: str, destination: str, *, content_type: str, if_match: str | None = None) -> StoredObject:
        """Copy an object inside the store, typed `content_type`; with `if_match`, only while the source has that ETag.

        ObjectNotFoundError when the source is missing, ObjectChangedError when its ETag is not `if_match`
        (nothing is written then). Returns what the destination now holds.
        """
        ...

    def open(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> ObjectReader:
        """Read an object, or the inclusive range (first, last-or-None) of it."""
        ...

    def head(self, key: str) -> StoredObject:
        """Return an object's metadata, or raise ObjectNotFoundError."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""
        ...

    def presign_upload(self, key: str, *, content_type: str, expires_in: int) -> PresignedUpload:
        """Return a time-limited request that lets a client PUT the object itself."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailableError when the backend cannot serve."""
        ...
