"""SwiftStorage on a real Swift: the storage contract, TempURLs, names, auth v1 and the 401 re-auth."""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import Iterator
from typing import BinaryIO, cast
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import requests

from photo_api.storage import InvalidKeyError, ObjectNotFoundError, StorageError, StorageUnavailableError, SwiftStorage
from tests.storage_contract import StorageContract, pseudo_random_chunks
from tests.swift.conftest import MakeStorage, Swift, fast_policy

pytestmark = pytest.mark.slow


class TestSwiftContract(StorageContract):
    @pytest.fixture
    def storage(self, make_storage: MakeStorage) -> SwiftStorage:
        return make_storage()


@pytest.fixture
def storage(make_storage: MakeStorage) -> SwiftStorage:
    return make_storage()


@pytest.fixture
def key() -> str:
    return f"swift/{secrets.token_hex(8)}/photo.png"


# ---------------------------------------------------------------------- TempURL


def test_presigned_upload_puts_straight_into_swift(storage: SwiftStorage, key: str) -> None:
    data = secrets.token_bytes(200_000)
    upload = storage.presign_upload(key, content_type="image/png", expires_in=120)
    assert urlsplit(upload.url).netloc == urlsplit(storage.presign_download(key, expires_in=60)).netloc
    response = requests.put(upload.url, data=data, headers=upload.headers, timeout=10)
    assert response.status_code == 201, response.text
    head = storage.head(key)
    assert (head.size, head.content_type) == (len(data), "image/png")
    with storage.open(key) as reader:
        assert b"".join(reader) == data


def test_presigned_upload_accepts_a_chunked_body(storage: SwiftStorage, key: str) -> None:
    upload = storage.presign_upload(key, content_type="image/jpeg", expires_in=120)
    response = requests.put(upload.url, data=pseudo_random_chunks(300_000), headers=upload.headers, timeout=10)
    assert response.status_code == 201, response.text
    assert storage.head(key).size == 300_000


def test_download_tempurl_serves_the_bytes(storage: SwiftStorage, key: str) -> None:
    data = b"tempurl download"
    storage.put(key, io.BytesIO(data), content_type="image/png")
    url = storage.presign_download(key, expires_in=60)
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == data
    assert requests.head(url, timeout=10).status_code == 200  # Swift: a GET signature also allows HEAD


def test_tempurl_signs_the_unencoded_path(storage: SwiftStorage) -> None:
    key = f"swift/{secrets.token_hex(4)}/sp ace+plus%pct/写真 #1?.png"
    upload = storage.presign_upload(key, content_type="image/png", expires_in=60)
    assert requests.put(upload.url, data=b"unicode", headers=upload.headers, timeout=10).status_code == 201
    assert requests.get(storage.presign_download(key, expires_in=60), timeout=10).content == b"unicode"


def test_expired_tempurls_are_refused(make_storage: MakeStorage, storage: SwiftStorage, key: str) -> None:
    storage.put(key, io.BytesIO(b"old"), content_type="image/png")
    an_hour_ago = make_storage(wall_clock=lambda: time.time() - 3600)
    upload = an_hour_ago.presign_upload(key, content_type="image/png", expires_in=60)
    assert requests.put(upload.url, data=b"new", headers=upload.headers, timeout=10).status_code == 401
    assert requests.get(an_hour_ago.presign_download(key, expires_in=60), timeout=10).status_code == 401
    with storage.open(key) as reader:
        assert b"".join(reader) == b"old"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


def test_tampered_tempurls_are_refused(storage: SwiftStorage, key: str) -> None:
    upload = storage.presign_upload(key, content_type="image/png", expires_in=60)
    signature = parse_qs(urlsplit(upload.url).query)["temp_url_sig"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    later = str(int(parse_qs(urlsplit(upload.url).query)["temp_url_expires"][0]) + 3600)
    other_key = upload.url.replace("photo.png", "other.png")
    for url in (
        _with_query(upload.url, temp_url_sig=flipped),
        _with_query(upload.url, temp_url_expires=later),
        other_key,
    ):
        assert requests.put(url, data=b"x", headers=upload.headers, timeout=10).status_code == 401
    # A download signature does not allow an upload.
    assert requests.put(storage.presign_download(key, expires_in=60), data=b"x", timeout=10).status_code == 401
    with pytest.raises(ObjectNotFoundError):
        storage.head(key)


def test_copy_keeps_none_of_what_the_uploader_attached(
    storage: SwiftStorage, swift: Swift, container: str, key: str
) -> None:
    # A TempURL PUT may carry any header Swift stores with an object; the copy confirm makes must not.
    upload = storage.presign_upload(key, content_type="image/png", expires_in=60)
    attached = {
        "Content-Type": "text/html",
        "Content-Disposition": "attachment; filename=evil.html",
        "Content-Encoding": "gzip",
        "X-Object-Meta-Evil": "yes",
        "X-Delete-After": "3600",
    }
    assert requests.put(upload.url, data=b"<html>", headers=attached, timeout=10).status_code == 201
    verified = storage.head(key)
    assert verified.content_type == "text/html"

    copy = storage.copy(key, key + ".final", content_type="image/png", if_match=verified.etag)
    assert (copy.etag, copy.size, copy.content_type) == (verified.etag, 6, "image/png")
    url = f"{swift.storage_url}/{container}/{key}.final"
    raw = requests.head(url, headers={"X-Auth-Token": swift.token()}, timeout=10)
    assert raw.status_code == 200
    kept = {name.lower() for name in raw.headers} & {name.lower() for name in attached if name != "Content-Type"}
    assert kept == set(), raw.headers
    assert "X-Delete-At" not in raw.headers
    assert raw.headers["Content-Type"] == "image/png"


def test_presign_needs_a_temp_url_key(make_storage: MakeStorage, key: str) -> None:
    with pytest.raises(StorageError, match="TEMP_URL_KEY"):
        make_storage(temp_url_key=None).presign_upload(key, content_type="image/png", expires_in=60)


# ---------------------------------------------------------------------- names and container


@pytest.mark.parametrize(
    "name", ["sp ace.png", "q?uery#frag.png", "per%25cent+plus.png", "한글/写真.jpg", "semi;colon&amp=.png"]
)
def test_object_names_are_percent_encoded(storage: SwiftStorage, swift: Swift, container: str, name: str) -> None:
    key = f"swift/{secrets.token_hex(4)}/{name}"
    storage.put(key, io.BytesIO(b"named"), content_type="image/png")
    assert key in swift.list_container(container)  # stored under exactly this name
    assert storage.head(key).size == 5
    storage.delete(key)
    assert key not in swift.list_container(container)


@pytest.mark.parametrize("bad", ["", "/abs", "a//b", "a/./b", "a/../b", "..", "a/", "a\x00b", "a\nb", "x" * 1025])
def test_keys_that_urls_would_alter_are_refused(storage: SwiftStorage, bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        storage.put(bad, io.BytesIO(b"x"), content_type="image/png")
    with pytest.raises(InvalidKeyError):
        storage.head(bad)


def test_container_is_created_once_per_process(make_storage: MakeStorage, swift: Swift) -> None:
    fresh = f"photo-api-fresh-{secrets.token_hex(4)}"
    storage = make_storage(container=fresh)
    storage.check()  # a missing container is not a failure: the first upload creates it
    for i in range(3):
        storage.put(f"k/{i}", io.BytesIO(b"x"), content_type="image/png")
    storage.presign_upload("k/3", content_type="image/png", expires_in=60)
    container_path = f"{urlsplit(swift.storage_url).path}/{fresh}"
    methods = [(method, status) for method, path, status in swift.access_log() if path == container_path]
    # check() HEADs it (404: fine), the first upload HEADs it again and PUTs it; later calls do neither.
    assert methods == [("HEAD", 404), ("HEAD", 404), ("PUT", 201)]
    assert sorted(swift.list_container(fresh)) == ["k/0", "k/1", "k/2"]


def test_check_reports_an_account_it_cannot_use(make_storage: MakeStorage, swift: Swift) -> None:
    other_account = swift.storage_url.rsplit("/", 1)[0] + "/AUTH_someoneelse"
    with pytest.raises(StorageUnavailableError):
        make_storage(storage_url=other_account).check()


# ---------------------------------------------------------------------- Swift v1 auth


def test_wrong_swift_key_is_a_clear_unavailable_error(make_storage: MakeStorage, key: str) -> None:
    storage = make_storage(password="wrong")
    with pytest.raises(StorageUnavailableError, match="refused the credentials"):
        storage.head(key)
    assert storage.breaker_states == {"storage": "closed", "storage_auth": "closed"}


def test_revoked_token_is_replaced_once_and_the_call_succeeds(storage: SwiftStorage, swift: Swift, key: str) -> None:
    storage.put(key, io.BytesIO(b"before"), content_type="image/png")
    old = swift.token()
    swift.revoke(old)
    assert swift.status_with_token(old) == 401
    with storage.open(key) as reader:  # Swift answers 401, the storage re-authenticates and retries
        assert b"".join(reader) == b"before"
    assert swift.token() != old


def test_concurrent_calls_after_revocation_all_succeed(storage: SwiftStorage, swift: Swift, key: str) -> None:
    storage.put(key, io.BytesIO(b"shared"), content_type="image/png")
    swift.revoke(swift.token())
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def read() -> None:
        barrier.wait()
        try:
            assert storage.head(key).size == 6
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


@pytest.fixture
def big_key(storage: SwiftStorage) -> Iterator[str]:
    key = f"swift/{secrets.token_hex(8)}/big.bin"
    yield key
    storage.delete(key)


def test_reader_close_midway_releases_the_connection(storage: SwiftStorage, big_key: str) -> None:
    storage.put(big_key, io.BytesIO(secrets.token_bytes(2_000_000)), content_type="image/png")
    for _ in range(50):  # more readers abandoned midway than the pool holds connections
        reader = storage.open(big_key)
        next(iter(reader))
        reader.close()
    assert storage.head(big_key).size == 2_000_000


class FailingSource:
    """An upload source (a client connection) that breaks after a few reads."""

    def __init__(self, good_reads: int) -> None:
        self.good_reads = good_reads

    def read(self, size: int = -1) -> bytes:
        if self.good_reads == 0:
            raise ConnectionResetError("the client went away")
        self.good_reads -= 1
        return b"x" * size


def test_a_failing_source_is_not_a_storage_failure(make_storage: MakeStorage, key: str) -> None:
    storage = make_storage(policy=fast_policy(failure_threshold=1))
    with pytest.raises(ConnectionResetError, match="client went away"):
        storage.put(key, cast(BinaryIO, FailingSource(3)), content_type="image/png")
    assert storage.breaker_state == "closed"
    with pytest.raises(ObjectNotFoundError):
        storage.head(key)  # the half-sent body was discarded by Swift
