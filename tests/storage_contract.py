"""The behaviour every Storage backend must show.

Subclass `StorageContract` in a `Test...` class and provide a `storage` fixture; every test uses
fresh random keys, so a backend may share one bucket or container between tests.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import BinaryIO, cast

import pytest

from photo_api.storage import (
    CHUNK_SIZE,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectReader,
    ObjectTooLargeError,
    RangeOutsideObjectError,
    Storage,
)

KIB = 1024
MIB = 1024 * KIB
LARGE_OBJECT_BYTES = 20 * MIB
# A backend may read its input in whatever chunks suit it, but never the whole body at once.
MAX_SINGLE_READ = 1 * MIB
EMPTY_MD5 = hashlib.md5(b"").hexdigest()
RANGE_DATA = bytes(range(256)) * 4  # 1 KiB whose every offset is distinguishable


class GeneratedStream:
    """A read-only file-like object fed by a generator, recording how it is read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self.bytes_read = 0
        self.largest_read = 0

    def read(self, size: int = -1) -> bytes:
        """Return up to `size` bytes (fewer only at the end), like a buffered file."""
        # Reading "everything" is exactly what a backend must not do with an upload.
        assert size >= 0, "the backend read the whole stream at once"
        self.largest_read = max(self.largest_read, size)
        out = bytearray()
        while len(out) < size:
            if not self._pending:
                self._pending = next(self._chunks, b"")
                if not self._pending:
                    break
            take = size - len(out)
            out += self._pending[:take]
            self._pending = self._pending[take:]
        self.bytes_read += len(out)
        return bytes(out)


def pseudo_random_chunks(total: int, seed: bytes = b"contract") -> Iterator[bytes]:
    """Deterministic bytes that differ block to block, produced a block at a time."""
    produced = 0
    counter = 0
    while produced < total:
        block = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 2048
        block = block[: total - produced]
        produced += len(block)
        counter += 1
        yield block


def read_all(reader: ObjectReader) -> bytes:
    """Drain a reader, checking that no chunk is larger than CHUNK_SIZE."""
    with reader:
        chunks = list(reader)
    assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
    return b"".join(chunks)


def md5_of_reader(reader: ObjectReader) -> tuple[str, int]:
    """Hash a reader without holding its bytes; return (hex MD5, size)."""
    digest = hashlib.md5()
    size = 0
    with reader:
        for chunk in reader:
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class StorageContract:
    """Tests that any backend passes; subclasses supply the `storage` fixture."""

    @pytest.fixture
    def key(self) -> str:
        return f"contract/{secrets.token_hex(8)}/object.bin"

    def test_name_is_set(self, storage: Storage) -> None:
        assert isinstance(storage.name, str) and storage.name

    def test_put_returns_metadata(self, storage: Storage, key: str) -> None:
        data = b"hello, photo"
        obj = storage.put(key, io.BytesIO(data), content_type="image/png")
        assert obj.key == key
        assert obj.size == len(data)
        assert obj.etag == hashlib.md5(data).hexdigest()
        assert obj.content_type == "image/png"
        assert obj.last_modified.utcoffset() == timedelta(0)
        assert abs(obj.last_modified.timestamp() - time.time()) < 300

    def test_round_trip(self, storage: Storage, key: str) -> None:
        data = secrets.token_bytes(3 * CHUNK_SIZE + 17)
        storage.put(key, io.BytesIO(data), content_type="image/jpeg")
        reader = storage.open(key)
        assert (reader.start, reader.end, reader.length) == (0, len(data) - 1, len(data))
        assert reader.obj.size == len(data)
        assert reader.obj.etag == hashlib.md5(data).hexdigest()
        assert reader.obj.content_type == "image/jpeg"
        assert read_all(reader) == data

    def test_head_matches_put(self, storage: Storage, key: str) -> None:
        put = storage.put(key, io.BytesIO(b"x" * 1000), content_type="image/webp")
        head = storage.head(key)
        assert (head.key, head.size, head.etag, head.content_type) == (
            put.key,
            put.size,
            put.etag,
            put.content_type,
        )
        assert head.last_modified.utcoffset() == timedelta(0)
        assert abs(head.last_modified - put.last_modified) < timedelta(seconds=2)

    @pytest.mark.parametrize(
        ("byte_range", "start", "end"),
        [
            ((10, 19), 10, 19),
            ((0, 0), 0, 0),
            ((1000, None), 1000, 1023),
            ((1023, None), 1023, 1023),
            ((1023, 1023), 1023, 1023),
            ((1000, 5000), 1000, 1023),  # a last byte past the end is clamped, as HTTP says
            ((0, None), 0, 1023),
        ],
    )
    def test_range_read(
        self,
        storage: Storage,
        key: str,
        byte_range: tuple[int, int | None],
        start: int,
        end: int,
    ) -> None:
        storage.put(key, io.BytesIO(RANGE_DATA), content_type="image/gif")
        reader = storage.open(key, byte_range=byte_range)
        assert (reader.start, reader.end, reader.length) == (start, end, end - start + 1)
        assert reader.obj.size == len(RANGE_DATA)  # the full size, for Content-Range
        assert read_all(reader) == RANGE_DATA[start : end + 1]

    def test_range_spanning_chunks(self, storage: Storage, key: str) -> None:
        data = secrets.token_bytes(3 * CHUNK_SIZE)
        storage.put(key, io.BytesIO(data), content_type="image/png")
        first, last = CHUNK_SIZE - 5, 2 * CHUNK_SIZE + 5
        assert read_all(storage.open(key, byte_range=(first, last))) == data[first : last + 1]

    @pytest.mark.parametrize("first", [1024, 5000])
    def test_range_not_satisfiable(self, storage: Storage, key: str, first: int) -> None:
        storage.put(key, io.BytesIO(RANGE_DATA), content_type="image/gif")
        with pytest.raises(RangeOutsideObjectError) as caught:
            storage.open(key, byte_range=(first, None))
        assert caught.value.size == len(RANGE_DATA)

    def test_missing_object(self, storage: Storage, key: str) -> None:
        with pytest.raises(ObjectNotFoundError):
            storage.open(key)
        with pytest.raises(ObjectNotFoundError):
            storage.head(key)

    def test_delete(self, storage: Storage, key: str) -> None:
        storage.put(key, io.BytesIO(b"bye"), content_type="image/png")
        storage.delete(key)
        with pytest.raises(ObjectNotFoundError):
            storage.head(key)
        with pytest.raises(ObjectNotFoundError):
            storage.open(key)

    def test_delete_missing_is_quiet(self, storage: Storage, key: str) -> None:
        storage.delete(key)
        storage.put(key, io.BytesIO(b"once"), content_type="image/png")
        storage.delete(key)
        storage.delete(key)  # the second delete finds nothing and must not complain
        with pytest.raises(ObjectNotFoundError):
            storage.head(key)

    def test_delete_leaves_other_objects(self, storage: Storage, key: str) -> None:
        other = key + ".other"
        storage.put(key, io.BytesIO(b"one"), content_type="image/png")
        storage.put(other, io.BytesIO(b"two"), content_type="image/png")
        storage.delete(key)
        assert read_all(storage.open(other)) == b"two"

    def test_overwrite(self, storage: Storage, key: str) -> None:
        old = secrets.token_bytes(4 * CHUNK_SIZE)
        new = b"replacement"
        storage.put(key, io.BytesIO(old), content_type="image/jpeg")
        with storage.open(key) as old_reader:
            chunks = iter(old_reader)
            first = next(chunks)
            storage.put(key, io.BytesIO(new), content_type="image/png")
            rest = b"".join(chunks)
        # A reader opened before the overwrite sees the old object whole, never a mix.
        assert first + rest == old
        head = storage.head(key)
        assert (head.size, head.etag, head.content_type) == (
            len(new),
            hashlib.md5(new).hexdigest(),
            "image/png",
        )
        assert read_all(storage.open(key)) == new

    def test_large_object_is_streamed(self, storage: Storage, key: str) -> None:
        expected = hashlib.md5()
        for block in pseudo_random_chunks(LARGE_OBJECT_BYTES):
            expected.update(block)
        stream = GeneratedStream(pseudo_random_chunks(LARGE_OBJECT_BYTES))
        obj = storage.put(key, cast(BinaryIO, stream), content_type="image/jpeg")
        assert obj.size == LARGE_OBJECT_BYTES
        assert obj.etag == expected.hexdigest()
        assert stream.largest_read <= MAX_SINGLE_READ
        assert md5_of_reader(storage.open(key)) == (expected.hexdigest(), LARGE_OBJECT_BYTES)

    def test_exactly_max_bytes_is_accepted(self, storage: Storage, key: str) -> None:
        obj = storage.put(key, io.BytesIO(b"z" * 1000), content_type="image/png", max_bytes=1000)
        assert obj.size == 1000

    def test_max_bytes_exceeded_stores_nothing(self, storage: Storage, key: str) -> None:
        limit = 100 * KIB
        stream = GeneratedStream(pseudo_random_chunks(10 * MIB))
        with pytest.raises(ObjectTooLargeError):
            storage.put(key, cast(BinaryIO, stream), content_type="image/png", max_bytes=limit)
        # Reading stops soon after the limit instead of draining the whole upload.
        assert limit < stream.bytes_read <= limit + MAX_SINGLE_READ
        with pytest.raises(ObjectNotFoundError):
            storage.head(key)

    def test_max_bytes_exceeded_keeps_previous_object(self, storage: Storage, key: str) -> None:
        storage.put(key, io.BytesIO(b"original"), content_type="image/png")
        with pytest.raises(ObjectTooLargeError):
            storage.put(key, io.BytesIO(b"y" * 2000), content_type="image/png", max_bytes=1000)
        assert read_all(storage.open(key)) == b"original"

    def test_empty_object(self, storage: Storage, key: str) -> None:
        obj = storage.put(key, io.BytesIO(b""), content_type="image/png")
        assert (obj.size, obj.etag) == (0, EMPTY_MD5)
        reader = storage.open(key)
        assert reader.length == 0
        assert read_all(reader) == b""
        assert storage.head(key).size == 0
        with pytest.raises(RangeOutsideObjectError) as caught:
            storage.open(key, byte_range=(0, None))
        assert caught.value.size == 0

    def test_reader_close_is_idempotent(self, storage: Storage, key: str) -> None:
        storage.put(key, io.BytesIO(b"abc"), content_type="image/png")
        reader = storage.open(key)
        reader.close()
        reader.close()

    def test_copy_makes_an_independent_object(self, storage: Storage, key: str) -> None:
        data = secrets.token_bytes(2 * CHUNK_SIZE + 5)
        storage.put(key, io.BytesIO(data), content_type="text/html")
        copy = storage.copy(key, key + ".copy", content_type="image/png")
        assert (copy.key, copy.size, copy.etag, copy.content_type) == (
            key + ".copy",
            len(data),
            hashlib.md5(data).hexdigest(),
            "image/png",
        )
        head = storage.head(key + ".copy")
        assert (head.size, head.etag, head.content_type) == (copy.size, copy.etag, "image/png")
        # Later writes to the source, or its deletion, leave the copy as it was.
        storage.put(key, io.BytesIO(b"replaced"), content_type="text/html")
        assert read_all(storage.open(key + ".copy")) == data
        storage.delete(key)
        assert read_all(storage.open(key + ".copy")) == data

    def test_copy_if_match_copies_only_the_named_version(self, storage: Storage, key: str) -> None:
        storage.put(key, io.BytesIO(b"verified bytes"), content_type="image/png")
        verified = hashlib.md5(b"verified bytes").hexdigest()
        assert storage.copy(key, key + ".a", content_type="image/png", if_match=verified).etag == verified
        storage.put(key, io.BytesIO(b"replaced after the check"), content_type="image/png")
        with pytest.raises(ObjectChangedError):
            storage.copy(key, key + ".b", content_type="image/png", if_match=verified)
        with pytest.raises(ObjectNotFoundError):
            storage.head(key + ".b")
        assert read_all(storage.open(key + ".a")) == b"verified bytes"

    def test_copy_of_a_missing_object(self, storage: Storage, key: str) -> None:
        with pytest.raises(ObjectNotFoundError):
            storage.copy(key, key + ".copy", content_type="image/png")
        with pytest.raises(ObjectNotFoundError):
            storage.copy(key, key + ".copy", content_type="image/png", if_match=EMPTY_MD5)
        with pytest.raises(ObjectNotFoundError):
            storage.head(key + ".copy")

    def test_presign_upload_shape(self, storage: Storage, key: str) -> None:
        before = int(time.time())
        upload = storage.presign_upload(key, content_type="image/webp", expires_in=600)
        assert upload.method == "PUT"
        assert upload.headers.get("Content-Type") == "image/webp"
        assert before + 600 <= upload.expires_at <= int(time.time()) + 600
        assert upload.url

    def test_check_passes_when_serving(self, storage: Storage, key: str) -> None:
        storage.put(key, io.BytesIO(b"ok"), content_type="image/png")
        storage.check()
