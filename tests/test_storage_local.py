"""LocalStorage: the shared contract, plus key confinement, presigned uploads and health checks."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from photo_api.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    ObjectTooLargeError,
    StorageError,
    StorageUnavailableError,
    build_storage,
)
from tests.storage_contract import StorageContract

SIGNING_KEY = b"local-storage-test-signing-key-0"
NOW = 1_700_000_000.75
NOBODY_ID = 65534  # the conventional unprivileged uid/gid


class Clock:
    """A settable stand-in for time.time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "objects", signing_key=SIGNING_KEY)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def storage(root: Path) -> LocalStorage:
    return LocalStorage(root, signing_key=SIGNING_KEY)


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def clocked(root: Path, clock: Clock) -> LocalStorage:
    return LocalStorage(root, signing_key=SIGNING_KEY, clock=clock)


def files_under(path: Path) -> list[str]:
    """Every regular file below `path`, relative and sorted (temp files included)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def put_bytes(storage: LocalStorage, key: str, data: bytes = b"data") -> None:
    storage.put(key, io.BytesIO(data), content_type="image/png")


BAD_KEYS = [
    "",
    "../x",
    "/etc/passwd",
    "a/../../x",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "..\\x",
    "a\x00b",
    "a\nb",
    "a\x7fb",
    "a\u202eb",  # right-to-left override
    ".hidden",
    "u/1/.tmp-abc",  # the shape of our own temp files
    "x" * 256,
    "a/" * 600 + "b",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused_everywhere(storage: LocalStorage, root: Path, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        put_bytes(storage, key)
    with pytest.raises(InvalidKeyError):
        storage.open(key)
    with pytest.raises(InvalidKeyError):
        storage.head(key)
    with pytest.raises(InvalidKeyError):
        storage.delete(key)
    with pytest.raises(InvalidKeyError):
        storage.presign_upload(key, content_type="image/png", expires_in=60)
    assert not root.exists()


def test_invalid_key_is_a_value_error() -> None:
    assert issubclass(InvalidKeyError, ValueError)
    assert issubclass(InvalidKeyError, StorageError)


def test_unicode_keys_are_allowed(storage: LocalStorage) -> None:
    put_bytes(storage, "u/1/café.jpg", b"unicode")
    assert storage.head("u/1/café.jpg").size == len(b"unicode")


def test_symlinked_directory_leading_outside_is_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    root.mkdir()
    (root / "u").symlink_to(outside, target_is_directory=True)
    storage = LocalStorage(root, signing_key=SIGNING_KEY)

    with pytest.raises(InvalidKeyError):
        storage.head("u/secret.jpg")
    with pytest.raises(InvalidKeyError):
        storage.open("u/secret.jpg")
    with pytest.raises(InvalidKeyError):
        put_bytes(storage, "u/planted.jpg")
    with pytest.raises(InvalidKeyError):
        storage.delete("u/secret.jpg")
    assert files_under(outside) == ["secret.jpg"]


def test_symlinked_file_leading_outside_is_refused(tmp_path: Path, root: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    root.mkdir()
    (root / "link.jpg").symlink_to(secret)
    storage = LocalStorage(root, signing_key=SIGNING_KEY)

    with pytest.raises(InvalidKeyError):
        storage.open("link.jpg")
    with pytest.raises(InvalidKeyError):
        storage.delete("link.jpg")
    assert secret.read_bytes() == b"secret"


def test_root_may_itself_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    storage = LocalStorage(link, signing_key=SIGNING_KEY)
    put_bytes(storage, "u/1/a.png", b"through the link")
    assert files_under(real) == ["u/1/a.png"]
    assert storage.head("u/1/a.png").size == len(b"through the link")


def test_root_is_created_lazily(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "objects"
    storage = LocalStorage(root, signing_key=SIGNING_KEY)
    assert not root.exists()
    put_bytes(storage, "a.png")
    assert root.is_dir()


def test_relative_root_is_fixed_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = LocalStorage("objects", signing_key=SIGNING_KEY)
    monkeypatch.chdir("/")
    put_bytes(storage, "a.png")
    assert (tmp_path / "objects" / "a.png").is_file()


def test_no_temp_files_survive(storage: LocalStorage, root: Path) -> None:
    put_bytes(storage, "u/1/kept.png")
    put_bytes(storage, "u/1/kept.png", b"overwritten")
    with pytest.raises(ObjectTooLargeError):
        storage.put("u/1/big.png", io.BytesIO(b"x" * 100), content_type="image/png", max_bytes=10)
    assert files_under(root) == ["u/1/kept.png"]


class FailingStream:
    """Yields some bytes, then fails like a client connection that was reset."""

    def __init__(self) -> None:
        self._sent = False

    def read(self, size: int = -1) -> bytes:
        if not self._sent:
            self._sent = True
            return b"partial"
        raise ConnectionResetError("client went away")


def test_source_errors_pass_through_untranslated(storage: LocalStorage, root: Path) -> None:
    # A client hanging up is the client's problem: it must not look like a storage outage.
    with pytest.raises(ConnectionResetError):
        storage.put("u/1/a.png", cast(BinaryIO, FailingStream()), content_type="image/png")
    assert files_under(root) == []


def test_last_modified_comes_from_the_clock(clocked: LocalStorage) -> None:
    obj = clocked.put("a.png", io.BytesIO(b"x"), content_type="image/png")
    expected = datetime.fromtimestamp(NOW, tz=UTC)
    assert obj.last_modified == expected
    assert clocked.head("a.png").last_modified == expected


def test_metadata_survives_a_new_instance(root: Path) -> None:
    LocalStorage(root, signing_key=SIGNING_KEY).put("a.gif", io.BytesIO(b"GIF89a..."), content_type="image/gif")
    head = LocalStorage(root, signing_key=b"another key").head("a.gif")
    assert (head.content_type, head.size, head.etag) == (
        "image/gif",
        9,
        hashlib.md5(b"GIF89a...").hexdigest(),
    )


@pytest.mark.parametrize("content_type", ["", "image/png\r\nX-Injected: 1", "image/\u00e9", "a" * 256])
def test_bad_content_types_are_refused(storage: LocalStorage, content_type: str) -> None:
    with pytest.raises(ValueError):
        storage.put("a.png", io.BytesIO(b"x"), content_type=content_type)


def test_keys_colliding_with_directories_or_files(storage: LocalStorage) -> None:
    put_bytes(storage, "a/b.png")
    with pytest.raises(InvalidKeyError):
        put_bytes(storage, "a")  # "a" is a directory of other objects
    with pytest.raises(InvalidKeyError):
        put_bytes(storage, "a/b.png/c.png")  # "a/b.png" is an object, not a directory
    with pytest.raises(ObjectNotFoundError):
        storage.head("a")
    with pytest.raises(ObjectNotFoundError):
        storage.open("a/b.png/c.png")
    storage.delete("a")
    assert storage.head("a/b.png").size == len(b"data")


def test_foreign_file_is_an_error_not_a_missing_object(storage: LocalStorage, root: Path) -> None:
    root.mkdir()
    (root / "raw.jpg").write_bytes(b"\xff\xd8\xff not written by LocalStorage")
    with pytest.raises(StorageError) as caught:
        storage.head("raw.jpg")
    assert not isinstance(caught.value, ObjectNotFoundError)


def test_truncated_object_is_reported(storage: LocalStorage, root: Path) -> None:
    put_bytes(storage, "a.png", b"x" * 1000)
    path = root / "a.png"
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(StorageError):
        storage.head("a.png")
    with pytest.raises(StorageError):
        storage.open("a.png")


def test_invalid_byte_ranges_are_caller_errors(storage: LocalStorage) -> None:
    put_bytes(storage, "a.png", b"0123456789")
    with pytest.raises(ValueError):
        storage.open("a.png", byte_range=(-1, None))
    with pytest.raises(ValueError):
        storage.open("a.png", byte_range=(5, 4))


def test_negative_max_bytes_is_refused(storage: LocalStorage) -> None:
    with pytest.raises(ValueError):
        storage.put("a.png", io.BytesIO(b""), content_type="image/png", max_bytes=-1)


def test_empty_signing_key_is_refused(root: Path) -> None:
    with pytest.raises(ValueError):
        LocalStorage(root, signing_key=b"")


def expected_signature(key: str, expires: int, signing_key: bytes = SIGNING_KEY) -> str:
    """The documented scheme, computed independently of the code under test."""
    message = f"PUT\n{expires}\n{key}".encode()
    return hmac.new(signing_key, message, hashlib.sha256).hexdigest()


def test_presign_upload_url(clocked: LocalStorage) -> None:
    key = "u/12/a b%.jpg"
    upload = clocked.presign_upload(key, content_type="image/jpeg", expires_in=3600)
    expires = int(NOW) + 3600

    parts = urlsplit(upload.url)
    assert (parts.scheme, parts.netloc) == ("", "")  # relative: the web layer adds the host
    assert parts.path == "/uploads/u/12/a%20b%25.jpg"
    assert unquote(parts.path.removeprefix("/uploads/")) == key
    assert parse_qs(parts.query) == {
        "expires": [str(expires)],
        "signature": [expected_signature(key, expires)],
    }
    assert upload.method == "PUT"
    assert upload.headers == {"Content-Type": "image/jpeg"}
    assert upload.expires_at == expires


def presigned(storage: LocalStorage, key: str) -> tuple[str, str]:
    """Presign `key` and return the (expires, signature) query values."""
    upload = storage.presign_upload(key, content_type="image/png", expires_in=600)
    query = parse_qs(urlsplit(upload.url).query)
    return query["expires"][0], query["signature"][0]


def test_verify_accepts_a_fresh_signature(clocked: LocalStorage, clock: Clock) -> None:
    expires, signature = presigned(clocked, "u/1/a.png")
    assert clocked.verify_upload("u/1/a.png", expires, signature)
    clock.now = int(expires) - 1
    assert clocked.verify_upload("u/1/a.png", expires, signature)


@pytest.mark.parametrize("later", [0, 1, 86_400])
def test_verify_rejects_expired(clocked: LocalStorage, clock: Clock, later: int) -> None:
    expires, signature = presigned(clocked, "u/1/a.png")
    clock.now = int(expires) + later
    assert not clocked.verify_upload("u/1/a.png", expires, signature)


def test_verify_rejects_tampering(clocked: LocalStorage, root: Path, clock: Clock) -> None:
    expires, signature = presigned(clocked, "u/1/a.png")
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert not clocked.verify_upload("u/1/b.png", expires, signature)
    assert not clocked.verify_upload("u/1/a.png", str(int(expires) + 1), signature)
    assert not clocked.verify_upload("u/1/a.png", "0" + expires, signature)
    assert not clocked.verify_upload("u/1/a.png", expires, flipped)
    other = LocalStorage(root, signing_key=b"some other signing key", clock=clock)
    assert not other.verify_upload("u/1/a.png", expires, signature)


@pytest.mark.parametrize(
    ("key", "expires", "signature"),
    [
        ("u/1/a.png", "", None),
        ("u/1/a.png", "soon", None),
        ("u/1/a.png", "-1", None),
        ("u/1/a.png", "1e12", None),
        ("u/1/a.png", " {expires}", None),
        ("u/1/a.png", "\u0661\u0667\u0660\u0660", None),  # Arabic-Indic digits, which int() accepts
        ("u/1/a.png", "9" * 13, None),
        ("u/1/a.png", None, ""),
        ("u/1/a.png", None, "not hex"),
        ("u/1/a.png", None, "{signature_upper}"),
        ("u/1/a.png", None, "{signature_short}"),
        ("u/1/a.png", None, "\u00e9" * 64),
        ("../a.png", None, None),
        ("", None, None),
    ],
)
def test_verify_rejects_malformed_input(
    clocked: LocalStorage, key: str, expires: str | None, signature: str | None
) -> None:
    good_expires, good_signature = presigned(clocked, "u/1/a.png")
    values = {
        "expires": good_expires,
        "signature_upper": good_signature.upper(),
        "signature_short": good_signature[:-1],
    }
    assert (
        clocked.verify_upload(
            key,
            good_expires if expires is None else expires.format(**values),
            good_signature if signature is None else signature.format(**values),
        )
        is False
    )


def test_presign_refuses_non_positive_lifetimes(storage: LocalStorage) -> None:
    with pytest.raises(ValueError):
        storage.presign_upload("a.png", content_type="image/png", expires_in=0)


def test_check_fails_while_the_root_is_missing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "missing" / "objects", signing_key=SIGNING_KEY)
    with pytest.raises(StorageUnavailableError):
        storage.check()
    put_bytes(storage, "a.png")
    storage.check()


def test_check_fails_when_the_root_is_a_file(root: Path, storage: LocalStorage) -> None:
    root.write_bytes(b"not a directory")
    with pytest.raises(StorageUnavailableError):
        storage.check()


@pytest.fixture
def traversable_dir() -> Iterator[Path]:
    """A temp directory an unprivileged user can enter (pytest's tmp_path may be private to root)."""
    with tempfile.TemporaryDirectory() as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def check_outcome(storage: LocalStorage) -> str:
    """Run check() as an unprivileged user, since root ignores permission bits; name the outcome."""

    def outcome() -> str:
        try:
            storage.check()
        except StorageUnavailableError:
            return "unavailable"
        return "ok"

    if os.geteuid() != 0:
        return outcome()
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgid(NOBODY_ID)
            os.setuid(NOBODY_ID)
            code = 0 if outcome() == "ok" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "ok", 1: "unavailable"}.get(code, f"child failed with {code}")


def test_check_fails_on_a_read_only_root(traversable_dir: Path) -> None:
    root = traversable_dir / "objects"
    root.mkdir()
    storage = LocalStorage(root, signing_key=SIGNING_KEY)
    try:
        root.chmod(0o555)
        assert check_outcome(storage) == "unavailable"
        root.chmod(0o777)  # the same check passes once the directory is writable
        assert check_outcome(storage) == "ok"
    finally:
        root.chmod(0o755)


def test_build_storage_from_the_registry(root: Path) -> None:
    storage = build_storage("local", root=root, signing_key=SIGNING_KEY)
    assert isinstance(storage, LocalStorage)
    assert storage.name == "local"
    assert storage.root == root


def test_build_storage_refuses_unknown_names(root: Path) -> None:
    with pytest.raises(ValueError, match="local"):
        build_storage("s3", root=root, signing_key=SIGNING_KEY)
