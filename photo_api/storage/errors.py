"""Storage error vocabulary: every backend translates its own failures into these."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for every failure a storage backend reports."""


class ObjectNotFoundError(StorageError):
    """No object is stored under the requested key."""


class ObjectTooLargeError(StorageError):
    """More bytes arrived than the caller allowed; nothing was stored."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"object exceeds the limit of {max_bytes} bytes")
        self.max_bytes = max_bytes


class ObjectChangedError(StorageError):
    """A conditional copy found the source with another ETag than the caller named; nothing was copied."""


class RangeOutsideObjectError(StorageError):
    """The requested byte range starts beyond the object; `size` feeds `Content-Range: bytes */size`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for an object of {size} bytes")
        self.size = size


class InvalidKeyError(StorageError, ValueError):
    """The key is not an acceptable object name (empty, escaping the store, control characters...)."""


class StorageUnavailableError(StorageError):
    """The backend cannot serve right now; `retry_after` (seconds) is a hint for a 503."""

    def __init__(self, message: str = "storage unavailable", *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
