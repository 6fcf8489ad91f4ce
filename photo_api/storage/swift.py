"""OpenStack Swift storage (NHN Cloud Object Storage speaks the Swift v1 API), behind our resilience policy.

Every request goes bulkhead (a `resilience.Bulkhead`, given by the caller) → token → `Resilient.call`
(deadline → retries → breaker → the request), with one re-authentication when Swift answers 401.
Decisions worth knowing:

- Uploads are streamed with `Transfer-Encoding: chunked` and hashed on the way; Swift's ETag must match
  our MD5. An upload is retried (transient failure, or a 401) only when its source is seekable, so it
  can be rewound: a request body stream cannot be replayed, and a retry that sent half a body again
  would store garbage. The web layer's request stream is not seekable, so API uploads get one attempt.
- Only Swift's own time counts against an upload: reading the source happens outside the call's deadline,
  and a source that fails or stalls (the API's body reader raises when a client stops sending) aborts the
  PUT without counting as a Swift failure or success in the breaker.
- Going over `max_bytes` aborts the PUT before the terminating chunk is sent, which makes Swift discard
  the partial body; whatever was stored under the key before stays in place.
- For a streaming GET, the deadline and the bulkhead slot cover obtaining the response headers; the
  body then streams under the per-read timeout, for as long as the client takes to receive it.
- Nothing above this module sees a requests exception or a Swift status code.

It is long (about 600 lines) because it is one backend's whole contract, read top to bottom: every
Storage call, the upload body, and the translation of Swift's answers, all private to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import BinaryIO, Literal, NoReturn
from urllib.parse import quote, unquote, urlsplit

import requests
from requests.adapters import HTTPAdapter

from photo_api.greenlets import outside_deadlines
from photo_api.resilience import (
    RETRYABLE_STATUSES,
    Bulkhead,
    BulkheadFullError,
    CallerSideError,
    DependencyUnavailableError,
    Events,
    Policy,
    Resilient,
    raise_for_transient,
)
from photo_api.storage.base import CHUNK_SIZE, ObjectReader, PresignedUpload, StoredObject, resolve_range
from photo_api.storage.errors import (
    InvalidKeyError,
    ObjectChangedError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    RangeOutsideObjectError,
    StorageError,
    StorageUnavailableError,
)
from photo_api.storage.keystone import Credentials, Token, TokenSource

log = logging.getLogger(__name__)

# Swift's default max_object_name_length (bytes, after URL decoding) and container name limit.
MAX_KEY_BYTES = 1024
MAX_CONTAINER_BYTES = 256
MAX_CONTENT_TYPE_LENGTH = 255
# Streaming downloads keep their connection after giving back their bulkhead slot, so the pool holds
# more connections than there are slots; beyond it urllib3 opens (and then drops) extra ones.
POOL_SIZE_PER_SLOT = 2
# Host pools kept by the session: Swift, the auth service, and a spare for a catalog URL change.
POOL_HOSTS = 3

_CONTENT_TYPE_RE = re.compile(rf"[\x20-\x7e]{{1,{MAX_CONTENT_TYPE_LENGTH}}}")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes \*/(\d+)")

# Which breaker state wins when the two are combined for health.
_SEVERITY: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


class _TokenRejectedError(Exception):
    """Swift answered 401: the token expired or was revoked (an answer, so the breaker stays closed)."""


class _SourceError(CallerSideError):
    """The caller's upload stream failed or stalled: carried through requests and the breaker, counted neither way."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _UploadBody:
    """The chunks of one upload: size limit, MD5, and rewinding for a retry when the source allows it."""

    def __init__(self, stream: BinaryIO, max_bytes: int | None) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._start = _start_position(stream)
        self._started = False
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)  # an etag, not a security control

    @property
    def replayable(self) -> bool:
        """True when the source can be rewound, which makes resending the PUT safe."""
        return self._start is not None

    def chunks(self) -> Iterator[bytes]:
        """Start (or restart) the body; raise StorageUnavailableError when it cannot be sent again."""
        if self._started:
            if self._start is None:
                raise StorageUnavailableError(
                    "the upload was interrupted and its body cannot be replayed", retry_after=1
                )
            self._stream.seek(self._start)
        self._started = True
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        return self._generate()

    def _generate(self) -> Iterator[bytes]:
        limit = self._max_bytes
        while True:
            # At most one byte past the limit, so an oversized upload is noticed without reading on.
            want = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - self.size + 1)
            try:
                # Waiting for the source (a client sending its body) is not Swift's time: the call's deadline
                # stops meanwhile, so a slow but live client does not use up STORAGE_UPLOAD_TIMEOUT.
                with outside_deadlines():
                    chunk = self._stream.read(want)
            except Exception as exc:
                raise _SourceError(exc) from exc
            if not chunk:
                return
            self.size += len(chunk)
            if limit is not None and self.size > limit:
                # Raised inside requests' body loop: the connection is closed before the final
                # zero-length chunk, so Swift never commits the object.
                raise ObjectTooLargeError(limit)
            self.md5.update(chunk)
            yield chunk


class SwiftStorage:
    """Objects in one Swift container, reached through a per-process session, token and breaker."""

    name = "swift"

    def __init__(
        self,
        *,
        auth_url: str,
        username: str,
        password: str,
        container: str,
        policy: Policy,
        auth_policy: Policy,
        upload_timeout: float,
        check_timeout: float,
        bulkhead: Bulkhead,
        auth_version: Literal["1", "2"] = "2",
        tenant_id: str | None = None,
        storage_url: str | None = None,
        region: str = "",
        temp_url_key: str | None = None,
        events: Events | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        _validate_container(container)
        if auth_version == "2" and not tenant_id:
            raise ValueError("Keystone v2 auth needs a tenant id")
        self._container = container
        self._policy = policy
        self._upload_timeout = upload_timeout
        self._check_timeout = check_timeout
        self._temp_url_key = temp_url_key.encode() if temp_url_key else None
        self._wall_clock = wall_clock
        # One session per process: its pool is shared by every greenlet of the worker. Failed attempts
        # are retried by Resilient only, never also by urllib3 (retries would multiply).
        self._session = requests.Session()
        adapter = HTTPAdapter(
            pool_connections=POOL_HOSTS,
            pool_maxsize=bulkhead.capacity * POOL_SIZE_PER_SLOT,
            max_retries=0,
            # Blocking would wait forever: requests never passes a pool timeout to urllib3.
            pool_block=False,
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._resilient = Resilient(policy, events=events, clock=clock)
        self._auth_resilient = Resilient(auth_policy, events=events, clock=clock)
        self._tokens = TokenSource(
            Credentials(
                auth_url=auth_url,
                version=auth_version,
                username=username,
                password=password,
                tenant_id=tenant_id,
                region=region,
                storage_url=storage_url,
            ),
            session=self._session,
            resilient=self._auth_resilient,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._bulkhead = bulkhead
        self._container_lock = threading.Lock()
        self._container_ready = False

    # ------------------------------------------------------------------ Storage protocol

    def put(
        self,
        key: str,
        stream: BinaryIO,
        *,
        content_type: str,
        max_bytes: int | None = None,
    ) -> StoredObject:
        """Stream `stream` to Swift in chunks, checking size and MD5; raise ObjectTooLargeError past `max_bytes`."""
        _validate_key(key)
        _validate_content_type(content_type)
        if max_bytes is not None and max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self._ensure_container()
        body = _UploadBody(stream, max_bytes)

        def send(token: Token) -> requests.Response:
            return self._session.put(
                self._object_url(token, key),
                data=body.chunks(),
                headers={"X-Auth-Token": token.id, "Content-Type": content_type},
                timeout=(self._policy.connect_timeout, self._upload_timeout),
            )

        try:
            response = self._request(send, "put", idempotent=body.replayable, deadline=self._upload_timeout)
        except _SourceError as exc:
            raise exc.original from None
        with response:
            status = response.status_code
            if status == 404:
                self._container_ready = False  # deleted behind our back: the next upload recreates it
                raise StorageUnavailableError(f"container {self._container!r} is missing", retry_after=1)
            if status == 422:
                raise StorageError(f"Swift rejected the upload of {key!r} as corrupt (HTTP 422)")
            if status != 201:
                _unexpected(response, f"upload of {key!r}")
            etag = _unquote_etag(response.headers.get("Etag"))
            last_modified = _last_modified(response, self._wall_clock)
        if etag != body.md5.hexdigest():
            self._delete_quietly(key)
            raise StorageError(f"upload of {key!r} was corrupted in transit (ETag mismatch)")
        return StoredObject(key=key, size=body.size, content_type=content_type, etag=etag, last_modified=last_modified)

    def copy(self, source: str, destination: str, *, content_type: str, if_match: str | None = None) -> StoredObject:
        """Server-side copy (`PUT` with `X-Copy-From`), then a HEAD of the copy; see Storage.copy.

        Swift evaluates a copy request's conditional headers against the *source*, so `If-Match` makes the
        copy happen only while the source still has the ETag the caller checked (412 otherwise).
        `X-Fresh-Metadata` drops whatever metadata the source's uploader attached (user metadata, a
        Content-Disposition, an X-Delete-At): the copy carries only its bytes and `content_type`.
        """
        _validate_key(source)
        _validate_key(destination)
        _validate_content_type(content_type)
        headers = {
            "X-Copy-From": quote(f"/{self._container}/{source}", safe="/"),
            "X-Fresh-Metadata": "true",
            "Content-Type": content_type,
        }
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'

        def send(token: Token) -> requests.Response:
            return self._session.put(
                self._object_url(token, destination),
                data=b"",  # a copy request must have an empty body (Content-Length: 0)
                headers={"X-Auth-Token": token.id, **headers},
                # Swift answers once it has read and written the whole object: an upload's budget.
                timeout=(self._policy.connect_timeout, self._upload_timeout),
            )

        # Idempotent: repeating it writes the same bytes again, and the condition is re-evaluated.
        with self._request(send, "copy", idempotent=True, deadline=self._upload_timeout) as response:
            status = response.status_code
            if status == 404:
                raise ObjectNotFoundError(source)
            if status == 412:
                raise ObjectChangedError(f"object {source!r} no longer has ETag {if_match}")
            if status != 201:
                _unexpected(response, f"copy of {source!r} to {destination!r}")
        # The copy's answer has no size: ask for the object as it is now stored.
        return self.head(destination)

    def open(self, key: str, *, byte_range: tuple[int, int | None] | None = None) -> ObjectReader:
        """Stream an object (or an inclusive byte range of it) from Swift in chunks."""
        _validate_key(key)
        headers: dict[str, str] = {}
        if byte_range is not None:
            first, last = byte_range
            if first < 0 or (last is not None and last < first):
                raise ValueError(f"invalid byte range {byte_range!r}")
            headers["Range"] = f"bytes={first}-{'' if last is None else last}"

        def send(token: Token) -> requests.Response:
            return self._session.get(
                self._object_url(token, key),
                headers={"X-Auth-Token": token.id, **headers},
                timeout=self._policy.timeout,
                stream=True,
            )

        response = self._request(send, "get", idempotent=True, deadline=self._policy.deadline)
        try:
            status = response.status_code
            if status == 404:
                raise ObjectNotFoundError(key)
            if status == 416:
                match = _UNSATISFIED_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                if match is None:
                    raise StorageError(f"Swift sent 416 without the object size for {key!r}")
                raise RangeOutsideObjectError(int(match.group(1)))
            if status == 206:
                match = _CONTENT_RANGE_RE.fullmatch(response.headers.get("Content-Range", ""))
                if match is None:
                    raise StorageError(f"Swift sent 206 without a usable Content-Range for {key!r}")
                start, end, size = (int(g) for g in match.groups())
                skip = 0
            elif status == 200:
                size = _content_length(response, key)
                # A range Swift chose to ignore: pick the bytes out of the whole body ourselves.
                start, end = resolve_range(byte_range, size)
                skip = start
            else:
                _unexpected(response, f"download of {key!r}")
            obj = _stored_object(key, response, size, self._wall_clock)
        except BaseException:
            response.close()
            raise
        chunks = _body_chunks(response, key, skip=skip, length=end - start + 1)
        return ObjectReader(obj, start, end, chunks, response.close)

    def head(self, key: str) -> StoredObject:
        """Return an object's metadata, or raise ObjectNotFoundError."""
        _validate_key(key)

        def send(token: Token) -> requests.Response:
            return self._session.head(
                self._object_url(token, key), headers={"X-Auth-Token": token.id}, timeout=self._policy.timeout
            )

        with self._request(send, "head", idempotent=True, deadline=self._policy.deadline) as response:
            if response.status_code == 404:
                raise ObjectNotFoundError(key)
            if response.status_code != 200:
                _unexpected(response, f"metadata of {key!r}")
            return _stored_object(key, response, _content_length(response, key), self._wall_clock)

    def delete(self, key: str) -> None:
        """Remove an object; a missing one (404) counts as done."""
        _validate_key(key)

        def send(token: Token) -> requests.Response:
            return self._session.delete(
                self._object_url(token, key), headers={"X-Auth-Token": token.id}, timeout=self._policy.timeout
            )

        with self._request(send, "delete", idempotent=True, deadline=self._policy.deadline) as response:
            if response.status_code not in (200, 204, 404):
                _unexpected(response, f"delete of {key!r}")

    def presign_upload(self, key: str, *, content_type: str, expires_in: int) -> PresignedUpload:
        """A Swift TempURL (HMAC-SHA256) that lets a client PUT the object straight to Swift."""
        _validate_key(key)
        _validate_content_type(content_type)
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        self._ensure_container()
        expires = int(self._wall_clock()) + expires_in
        return PresignedUpload(
            url=self._temp_url("PUT", key, expires),
            method="PUT",
            headers={"Content-Type": content_type},
            expires_at=expires,
        )

    def check(self) -> None:
        """HEAD the container within the health-check timeout; raise StorageUnavailableError if Swift cannot serve.

        A missing container passes: Swift answered, and the first upload creates it.
        """

        def send(token: Token) -> requests.Response:
            return self._session.head(
                self._container_url(token),
                headers={"X-Auth-Token": token.id},
                timeout=(self._policy.connect_timeout, self._check_timeout),
            )

        # One attempt: the health check must answer within its own budget.
        with self._request(send, "check", idempotent=False, deadline=self._check_timeout) as response:
            if response.status_code not in (200, 204, 404):
                raise StorageUnavailableError(
                    f"object storage answered the health check with HTTP {response.status_code}"
                )

    # ------------------------------------------------------------------ beyond the protocol

    def presign_download(self, key: str, *, expires_in: int) -> str:
        """A Swift TempURL for GET (and HEAD) of one object, valid for `expires_in` seconds."""
        _validate_key(key)
        if expires_in <= 0:
            raise ValueError("expires_in must be positive")
        return self._temp_url("GET", key, int(self._wall_clock()) + expires_in)

    @property
    def breaker_states(self) -> dict[str, str]:
        """closed | open | half_open for the object API ("storage") and the auth service ("storage_auth")."""
        return {
            self._resilient.policy.service: self._resilient.state,
            self._auth_resilient.policy.service: self._auth_resilient.state,
        }

    @property
    def breaker_state(self) -> str:
        """The worse of the two breakers: storage is unusable when either is open."""
        return max(self.breaker_states.values(), key=lambda state: _SEVERITY.get(state, 0))

    def close(self) -> None:
        """Close the pooled connections (the object stays usable; new connections are opened on demand)."""
        self._session.close()

    # ------------------------------------------------------------------ plumbing

    def _request(
        self, send: Callable[[Token], requests.Response], operation: str, *, idempotent: bool, deadline: float
    ) -> requests.Response:
        """One logical request: bulkhead slot, token, resilience, and one re-auth when Swift answers 401."""
        with self._slot():
            token = self._tokens.token()
            try:
                return self._attempt(send, token, operation, idempotent=idempotent, deadline=deadline)
            except _TokenRejectedError:
                self._tokens.invalidate(token)
            token = self._tokens.token()
            try:
                return self._attempt(send, token, operation, idempotent=idempotent, deadline=deadline)
            except _TokenRejectedError:
                # A brand-new token refused: wrong storage URL or tenant, or an account problem.
                self._tokens.invalidate(token)
                raise StorageUnavailableError("object storage refused a freshly issued token") from None

    def _attempt(
        self,
        send: Callable[[Token], requests.Response],
        token: Token,
        operation: str,
        *,
        idempotent: bool,
        deadline: float,
    ) -> requests.Response:
        def call() -> requests.Response:
            response = send(token)
            if response.status_code == 401 or response.status_code in RETRYABLE_STATUSES:
                response.close()  # a streamed response holds its connection until closed
            if response.status_code == 401:
                raise _TokenRejectedError()
            return raise_for_transient(response)

        try:
            return self._resilient.call(call, idempotent=idempotent, deadline_s=deadline, operation=operation)
        except DependencyUnavailableError as exc:
            raise StorageUnavailableError(
                f"object storage unavailable ({exc.reason})", retry_after=exc.retry_after
            ) from exc
        except requests.RequestException as exc:
            raise StorageError(f"object storage request failed: {type(exc).__name__}") from exc

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        try:
            with self._bulkhead.slot():
                yield
        except BulkheadFullError as exc:
            raise StorageUnavailableError(
                "too many storage calls in flight in this worker", retry_after=exc.retry_after
            ) from None

    def _ensure_container(self) -> None:
        """HEAD the container, PUT it when missing; once per process, not once per upload."""
        if self._container_ready:
            return
        with self._container_lock:
            if self._container_ready:
                return

            def head(token: Token) -> requests.Response:
                return self._session.head(
                    self._container_url(token), headers={"X-Auth-Token": token.id}, timeout=self._policy.timeout
                )

            def create(token: Token) -> requests.Response:
                return self._session.put(
                    self._container_url(token), headers={"X-Auth-Token": token.id}, timeout=self._policy.timeout
                )

            with self._request(head, "head", idempotent=True, deadline=self._policy.deadline) as response:
                status = response.status_code
            if status == 404:
                # Creating a container is idempotent (202 when it already exists), so it may be retried.
                with self._request(create, "put", idempotent=True, deadline=self._policy.deadline) as response:
                    if response.status_code not in (201, 202):
                        _unexpected(response, f"creation of container {self._container!r}")
            elif status not in (200, 204):
                raise StorageUnavailableError(f"container {self._container!r} answered HTTP {status}")
            self._container_ready = True

    def _delete_quietly(self, key: str) -> None:
        try:
            self.delete(key)
        except StorageError:
            log.warning("could not delete a corrupt upload", extra={"key": key})

    def _container_url(self, token: Token) -> str:
        return f"{token.storage_url}/{quote(self._container, safe='')}"

    def _object_url(self, token: Token, key: str) -> str:
        return f"{self._container_url(token)}/{quote(key, safe='/')}"

    def _temp_url(self, method: str, key: str, expires: int) -> str:
        """Sign `method` on the object's path: HMAC-SHA256 hex over the *unencoded* path, encoded only in the URL."""
        if self._temp_url_key is None:
            raise StorageError("NHN_STORAGE_TEMP_URL_KEY is not configured: no presigned URLs")
        parts = urlsplit(self._tokens.storage_url())
        path = f"{unquote(parts.path)}/{self._container}/{key}"
        message = f"{method}\n{expires}\n{path}".encode()
        signature = hmac.new(self._temp_url_key, message, hashlib.sha256).hexdigest()
        return f"{parts.scheme}://{parts.netloc}{quote(path)}?temp_url_sig={signature}&temp_url_expires={expires}"


def _body_chunks(response: requests.Response, key: str, *, skip: int, length: int) -> Iterator[bytes]:
    """The response body in chunks of at most CHUNK_SIZE: `skip` bytes dropped, exactly `length` kept."""
    remaining = length
    try:
        for chunk in response.iter_content(CHUNK_SIZE):
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            chunk = chunk[:remaining]
            if not chunk:
                if remaining == 0:
                    break
                continue
            remaining -= len(chunk)
            yield chunk
    except requests.RequestException as exc:
        raise StorageError(f"download of {key!r} was interrupted ({type(exc).__name__})") from exc
    if remaining:
        raise StorageError(f"download of {key!r} ended {remaining} bytes early")


def _start_position(stream: BinaryIO) -> int | None:
    """Where a seekable stream is now (to rewind to), or None when it cannot be rewound."""
    try:
        if not stream.seekable():
            return None
        return stream.tell()
    except (AttributeError, OSError, ValueError):
        return None


def _stored_object(key: str, response: requests.Response, size: int, wall_clock: Callable[[], float]) -> StoredObject:
    return StoredObject(
        key=key,
        size=size,
        content_type=response.headers.get("Content-Type", "application/octet-stream"),
        etag=_unquote_etag(response.headers.get("Etag")),
        last_modified=_last_modified(response, wall_clock),
    )


def _content_length(response: requests.Response, key: str) -> int:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        raise StorageError(f"Swift sent no usable Content-Length for {key!r}") from None


def _unquote_etag(value: str | None) -> str:
    # Swift quotes ETags only for containers with RFC-compliant ETags turned on.
    return (value or "").strip().strip('"')


def _last_modified(response: requests.Response, wall_clock: Callable[[], float]) -> datetime:
    value = response.headers.get("Last-Modified")
    if value:
        try:
            return parsedate_to_datetime(value).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.fromtimestamp(wall_clock(), tz=UTC)


def _unexpected(response: requests.Response, what: str) -> NoReturn:
    status = response.status_code
    if status in (401, 403) or status >= 500:
        # Credentials, account or server trouble: nothing the caller did, and not fixed by a retry now.
        raise StorageUnavailableError(f"object storage answered HTTP {status} to the {what}")
    raise StorageError(f"object storage answered HTTP {status} to the {what}")


def _validate_container(container: str) -> None:
    if not container or "/" in container or len(container.encode()) > MAX_CONTAINER_BYTES:
        raise ValueError(f"invalid Swift container name {container!r}")


def _validate_key(key: str) -> None:
    """Keys that survive URL handling unchanged: urllib3 would fold "." and ".." segments away."""
    if not key:
        raise InvalidKeyError("key must not be empty")
    if key.startswith("/"):
        raise InvalidKeyError(f"key {key!r} must be relative")
    if any(unicodedata.category(char).startswith("C") for char in key):
        raise InvalidKeyError(f"key {key!r} contains control or format characters")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key is longer than {MAX_KEY_BYTES} bytes")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise InvalidKeyError(f"key {key!r} has an empty or dot segment")


def _validate_content_type(content_type: str) -> None:
    # Sent as a header and stored: nothing that could split a header line.
    if not _CONTENT_TYPE_RE.fullmatch(content_type):
        raise ValueError("content_type must be 1-255 printable ASCII characters")
