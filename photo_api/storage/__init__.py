"""Object storage: the Storage protocol, its backends, and the registry config chooses from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from photo_api.storage.base import (
    CHUNK_SIZE,
    ObjectReader,
    PresignedUpload,
    Storage,
    StoredObject,
)
from photo_api.storage.errors import (
    InvalidKeyError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RangeOutsideObjectError,
    StorageError,
    StorageUnavailableError,
)
from photo_api.storage.local import LocalStorage
from photo_api.storage.swift import SwiftStorage

# Config names a backend; an unknown name fails at boot (never a silent fallback).
BACKENDS: dict[str, Callable[..., Storage]] = {"local": LocalStorage, "swift": SwiftStorage}


def build_storage(name: str, **kwargs: Any) -> Storage:
    """Construct the backend registered under `name` from plain config values."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown storage backend {name!r} (known: {known})") from None
    return factory(**kwargs)


__all__ = [
    "BACKENDS",
    "CHUNK_SIZE",
    "InvalidKeyError",
    "LocalStorage",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ObjectReader",
    "ObjectTooLargeError",
    "PresignedUpload",
    "RangeOutsideObjectError",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "StoredObject",
    "SwiftStorage",
    "build_storage",
]
