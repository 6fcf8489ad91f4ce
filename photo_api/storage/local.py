"""Filesystem storage: one file per object, for development and single-host deployments.

Each object is one file holding a fixed-size metadata header followed by the bytes. Keeping the
metadata inside the file (rather than in a sidecar) means a single `os.replace` swaps data and
metadata together: a reader, or a crash, can never pair new bytes with an old content type or etag.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import re
import stat
import tempfile
import time
import unicodedata
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from photo_api.storage.base import (
    CHUNK_SIZE,
    ObjectReader,
    PresignedUpload,
    StoredObject,
    resolve_range,
)
from photo_api.storage.errors import (
    InvalidKeyError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    StorageUnavailableError,
)

HEADER_MAGIC = b"photo-api-object/1\n"
# Fixed size so the data offset never depends on the metadata; the header is written after the
# bytes (the MD5 is known only then) into space reserved at the front.
HEADER_SIZE = 1024
# Swift's object-name limit, so a key valid here stays valid when the deployment moves to Swift.
MAX_KEY_BYTES = 1024
# NAME_MAX of the usual Linux filesystems.
MAX_SEGMENT_BYTES = 255
MAX_CONTENT_TYPE_LENGTH = 255
# Temp files share the object's directory (os.replace is atomic only within one filesystem);
# keys may not start a segment with ".", so this prefix never collides with an object.
TEMP_PREFIX = ".tmp-"
UPLOAD_PATH_PREFIX = "/uploads/"

_CONTENT_TYPE_RE = re.compile(rf"[\x20-\x7e]{{1,{MAX_CONTENT_TYPE_LENGTH}}}")
# Twelve digits reach far past any real expiry while keeping int() on hostile input cheap.
_EXPIRES_RE = re.compile(r"[0-9]{1,12}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")

# The errno values that mean "this store cannot work right now" rather than "this request is wrong".
_UNAVAILABLE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


class LocalStorage:
    """Objects as files under `root`; also verifies the presigned uploads it hands out."""

    name = "local"

    def __init__(
        self,
        root: str | Path,
        *,
        signing_key: bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not signing_key:
            raise ValueError("signing_key must not be empty")
        # Absolute now, so a later chdir (daemonising, gunicorn --chdir) cannot move the store.
        self._root = Path(os.path.abspath(root))
        self._signing_key = signing_key
        self._clock = clock

    @property
    def root(self) -> Path:
        """The directory objects live under (created on the first put)."""
        return self._root

    def put(
        self,
        key: str,
        stream: BinaryIO,
        *,
        content_type: str,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """Stream `stream` into a temp file, fsync it, then atomically rename it over `key`."""
        path = self._locate(key)
        _validate_content_type(content_type)
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        with _filesystem_errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)
        temp = Path(temp_name)
        out = os.fdopen(fd, "wb")
        # Only our own filesystem calls are translated: an error raised by the caller's stream
        # (a client that hung up) must not look like a storage outage.
        try:
            with _filesystem_errors(key):
                out.write(bytes(HEADER_SIZE))
            etag, size = _copy_limited(stream, out, max_bytes, key)
            obj = StoredObject(
                key=key,
                size=size,
                content_type=content_type,
                etag=etag,
                last_modified=datetime.fromtimestamp(self._clock(), tz=UTC),
            )
            with _filesystem_errors(key):
                out.seek(0)
                out.write(_encode_header(obj))
                out.flush()
                # Data must be on disk before the rename makes it visible, or a crash could
                # leave a visible object with missing bytes.
                os.fsync(out.fileno())
                out.close()
                os.replace(temp, path)
                _fsync_directory(path.parent)
        except BaseException:
            # Cleanup must not mask the error that got us here.
            with contextlib.suppress(OSError):
                out.close()
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        return obj

    def copy(self, source: str, destination: str, *, content_type: str, if_match: str | None = None) -> StoredObject:
        """Copy the bytes of `source` into a new file renamed over `destination`; see Storage.copy."""
        self._locate(destination)
        _validate_content_type(content_type)
        # The open file pins the version whose header is checked: objects are replaced by rename, never
        # rewritten in place, so a put racing this copy cannot change the bytes read below.
        with _open_object_file(self._locate(source), source) as file:
            with _filesystem_errors(source):
                obj = _read_header(file, source)
            if if_match is not None and obj.etag != if_match:
                raise ObjectChangedError(f"object {source!r} no longer has ETag {if_match}")
            # Raw OSErrors here can only come from reading the source: put translates its own.
            with _filesystem_errors(source):
                return self.put(destination, file, content_type=content_type)

    def open(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> ObjectReader:
        """Open an object (or an inclusive byte range of it) for streaming in chunks."""
        path = self._locate(key)
        file = _open_object_file(path, key)
        try:
            with _filesystem_errors(key):
                obj = _read_header(file, key)
                start, end = resolve_range(byte_range, obj.size)
                file.seek(HEADER_SIZE + start)
        except BaseException:
            file.close()
            raise
        return ObjectReader(obj, start, end, _read_chunks(file, end - start + 1, key), file.close)

    def head(self, key: str) -> StoredObject:
        """Return an object's metadata, or raise ObjectNotFoundError."""
        path = self._locate(key)
        with _open_object_file(path, key) as file, _filesystem_errors(key):
            return _read_header(file, key)

    def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""
        path = self._locate(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise _translate_os_error(exc, key) from exc
        with _filesystem_errors(key):
            _fsync_directory(path.parent)

    def presign_upload(self, key: str, *, content_type: str, expires_in: int) -> PresignedUpload:
        """Sign a relative PUT URL for this service's upload route; the web layer makes it absolute."""
        _validate_key(key)
        _validate_content_type(content_type)
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        expires = int(self._clock()) + expires_in
        signature = self._sign(key, str(expires))
        path = quote(key, safe="/")
        url = f"{UPLOAD_PATH_PREFIX}{path}?expires={expires}&signature={signature}"
        return PresignedUpload(
            url=url,
            method="PUT",
            headers={"Content-Type": content_type},
            expires_at=expires,
        )

    def verify_upload(self, key: str, expires: str, signature: str) -> bool:
        """Tell whether a presigned upload URL is authentic and unexpired; malformed input is False."""
        if not _EXPIRES_RE.fullmatch(expires) or not _SIGNATURE_RE.fullmatch(signature):
            return False
        try:
            _validate_key(key)
        except InvalidKeyError:
            return False
        if self._clock() >= int(expires):
            return False
        return hmac.compare_digest(self._sign(key, expires), signature)

    def check(self) -> None:
        """Raise StorageUnavailableError unless the root is an existing, writable directory."""
        # A missing root is reported rather than created: it often means a volume that is not
        # mounted, and creating it would quietly put objects on the wrong disk.
        try:
            is_dir = stat.S_ISDIR(os.stat(self._root).st_mode)
        except OSError:
            is_dir = False
        if not is_dir:
            raise StorageUnavailableError("local storage root is missing or not a directory")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StorageUnavailableError("local storage root is not writable")

    def _locate(self, key: str) -> Path:
        _validate_key(key)
        root = Path(os.path.realpath(self._root))
        path = root.joinpath(*key.split("/"))
        # The key is clean text, but a symlink inside the tree could still lead outside it.
        if not Path(os.path.realpath(path)).is_relative_to(root):
            raise InvalidKeyError(f"key {key!r} resolves outside the storage root")
        return path

    def _sign(self, key: str, expires: str) -> str:
        message = f"PUT\n{expires}\n{key}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()


def _validate_key(key: str) -> None:
    if not key:
        raise InvalidKeyError("key must not be empty")
    if key.startswith("/"):
        raise InvalidKeyError(f"key {key!r} must be relative")
    if "\\" in key:
        raise InvalidKeyError(f"key {key!r} must not contain a backslash")
    # Category C covers control characters (NUL included), lone surrogates and invisible format
    # characters; none belongs in an object name, and surrogates cannot even be encoded.
    if any(unicodedata.category(char).startswith("C") for char in key):
        raise InvalidKeyError(f"key {key!r} contains control or format characters")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key is longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        # A leading dot rules out ".", ".." and our own temp files in one check.
        if not segment or segment.startswith("."):
            raise InvalidKeyError(f"key {key!r} has an empty or dot-leading segment")
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(f"key {key!r} has a segment longer than {MAX_SEGMENT_BYTES} bytes")


def _validate_content_type(content_type: str) -> None:
    # It is stored and later sent back as a header, so nothing that could split a header line.
    if not _CONTENT_TYPE_RE.fullmatch(content_type):
        raise ValueError("content_type must be 1-255 printable ASCII characters")


def _copy_limited(stream: BinaryIO, out: BinaryIO, max_bytes: int | None, key: str) -> tuple[str, int]:
    """Copy `stream` to `out` chunk by chunk; return (hex MD5, size) or raise ObjectTooLargeError."""
    digest = hashlib.md5(usedforsecurity=False)  # an etag, not a security control
    size = 0
    while True:
        # Ask for at most one byte past the limit, so an oversized upload is noticed without
        # reading further than necessary.
        want = CHUNK_SIZE if max_bytes is None else min(CHUNK_SIZE, max_bytes - size + 1)
        chunk = stream.read(want)
        if not chunk:
            return digest.hexdigest(), size
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise ObjectTooLargeError(max_bytes)
        digest.update(chunk)
        with _filesystem_errors(key):
            out.write(chunk)


def _encode_header(obj: StoredObject) -> bytes:
    meta = {
        "content_type": obj.content_type,
        "etag": obj.etag,
        "size": obj.size,
        "last_modified": obj.last_modified.timestamp(),
    }
    header = HEADER_MAGIC + json.dumps(meta).encode() + b"\n"
    if len(header) > HEADER_SIZE:
        raise ValueError("object metadata does not fit the header")
    return header.ljust(HEADER_SIZE, b" ")


def _read_header(file: BinaryIO, key: str) -> StoredObject:
    raw = file.read(HEADER_SIZE)
    if len(raw) != HEADER_SIZE or not raw.startswith(HEADER_MAGIC):
        raise StorageError(f"object {key!r} is not in the local storage format")
    try:
        meta = json.loads(raw[len(HEADER_MAGIC) :])
        obj = StoredObject(
            key=key,
            size=int(meta["size"]),
            content_type=str(meta["content_type"]),
            etag=str(meta["etag"]),
            last_modified=datetime.fromtimestamp(float(meta["last_modified"]), tz=UTC),
        )
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise StorageError(f"object {key!r} has a corrupt header") from exc
    # Objects are only ever replaced whole, so a size mismatch means outside damage.
    if os.fstat(file.fileno()).st_size != HEADER_SIZE + obj.size:
        raise StorageError(f"object {key!r} is truncated or corrupt")
    return obj


def _open_object_file(path: Path, key: str) -> BinaryIO:
    try:
        return path.open("rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
        raise ObjectNotFoundError(key) from exc
    except OSError as exc:
        raise _translate_os_error(exc, key) from exc


def _read_chunks(file: BinaryIO, remaining: int, key: str) -> Iterator[bytes]:
    while remaining > 0:
        with _filesystem_errors(key):
            chunk = file.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            raise StorageError(f"object {key!r} shrank while being read")
        remaining -= len(chunk)
        yield chunk


def _fsync_directory(directory: Path) -> None:
    # Makes a rename or unlink durable: without it a crash may resurrect the old directory entry.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _filesystem_errors(key: str) -> Generator[None, None, None]:
    try:
        yield
    except OSError as exc:
        raise _translate_os_error(exc, key) from exc


def _translate_os_error(exc: OSError, key: str) -> StorageError:
    if exc.errno in _UNAVAILABLE_ERRNOS:
        return StorageUnavailableError(f"local storage failed: {exc.strerror}")
    # Reads map these to ObjectNotFoundError before getting here; for a write they mean the key's
    # path is taken by a directory of other objects, or runs through an existing object.
    if isinstance(exc, NotADirectoryError | IsADirectoryError | FileExistsError):
        return InvalidKeyError(f"key {key!r} collides with an existing object or directory")
    return StorageError(f"local storage failed on {key!r}: {exc.strerror}")
