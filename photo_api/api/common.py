"""What every route uses: the request's DB session, JSON parsing, auth, public URLs, responses."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import IO, Any, Generic, TypeVar

from flask import Response, g, request
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from ..errors import (
    BadRequestError,
    ClientTimeoutError,
    FieldError,
    ForbiddenError,
    PayloadTooLargeError,
    UnauthorizedError,
    ValidationFailedError,
)
from ..greenlets import deadline
from ..models import User
from ..security import InvalidTokenError
from ..services import users
from ..services.fields import validation_errors
from .context import current_db, current_limits, current_tokens

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

JSON_TYPES = ("application/json",)
WEB_SCHEMES = frozenset({"http", "https"})


def db_session() -> Session:
    """The request's DB session (opened on first use, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = current_db().session()
    session: Session = g.db_session
    return session


def close_db_session(_exc: BaseException | None = None) -> None:
    """Teardown: roll back whatever was not committed and return the connection to the pool."""
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.close()


def json_body(model: type[M]) -> M:
    """Parse and validate the JSON body as `model` (400 for non-JSON, 422 for failing fields)."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES and not mimetype.endswith("+json"):
        raise BadRequestError("Content-Type must be application/json")
    # A JSON body is small (MAX_JSON_BYTES): it must arrive whole within CLIENT_BODY_TIMEOUT, or a client
    # that stops sending would hold the request until the load balancer's idle timeout, or forever.
    timeout = current_limits().client_body_timeout
    with deadline(timeout, ClientTimeoutError(f"The client did not send its body within {timeout:g} seconds")):
        raw = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit and request.stream.read(1):
        # Werkzeug stops reading a body without Content-Length (chunked) at the limit and returns the
        # truncated bytes; the extra read raises 413 when more was sent (or is caught here if it did not).
        raise PayloadTooLargeError("Request body is too large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("Malformed JSON body") from None
    except RecursionError:  # `[[[[…` nested deeper than the parser's stack: hostile, not a server fault
        raise BadRequestError("JSON body is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValidationFailedError([FieldError("body", "must be a JSON object")])
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise ValidationFailedError(validation_errors(exc)) from None


class ClientBody:
    """A request body stream whose every read must get data from the client within `timeout` seconds.

    A client that stops sending is its own problem: the read raises ClientTimeoutError (408), which the
    storage layer passes through without counting against the dependency, instead of leaving the request
    (and whatever storage write it feeds) waiting until a storage deadline, or forever.
    """

    def __init__(self, stream: IO[bytes], timeout: float) -> None:
        self._stream = stream
        self._timeout = timeout

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes of the body (all of the rest for a negative size); b"" at its end."""
        # An Exception, not gevent's Timeout: gunicorn then marks the body as failed and closes the
        # connection after the 408 instead of waiting to drain what the client never sends.
        stalled = ClientTimeoutError(f"The client sent nothing for {self._timeout:g} seconds")
        with deadline(self._timeout, stalled):
            return self._stream.read(size)


def client_body() -> ClientBody:
    """This request's body stream (within its size limit), each read bounded by CLIENT_BODY_TIMEOUT."""
    return ClientBody(request.stream, current_limits().client_body_timeout)


def query_args(model: type[M]) -> M:
    """Validate query-string parameters as `model` (lax: they arrive as strings)."""
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise ValidationFailedError(validation_errors(exc)) from None


def current_user() -> User:
    """The authenticated user of this request (set by @auth_required)."""
    user: User = g.current_user
    return user


def authenticate_request() -> User:
    """Resolve the Bearer token to an active user; 401 (with WWW-Authenticate) or 403 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("Missing bearer token")
    try:
        user_id = current_tokens().user_id(token.strip())
    except InvalidTokenError:
        raise UnauthorizedError("Invalid or expired token") from None
    user = users.get(db_session(), user_id)
    if user is None:  # deleted since the token was issued
        raise UnauthorizedError("Invalid or expired token")
    if not user.is_active:
        raise ForbiddenError("User is inactive")
    return user


def auth_required(view: F) -> F:
    """Decorator: the route needs a valid bearer token of an active user."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        g.current_user = authenticate_request()
        return view(*args, **kwargs)

    wrapper._openapi = {**getattr(view, "_openapi", {}), "auth": True}  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def public_base_url() -> str:
    """PUBLIC_BASE_URL, else this request's scheme and host (as the trusted proxies forwarded them).

    `create_app` wraps the app in werkzeug's ProxyFix for TRUSTED_PROXY_COUNT proxies, so `request.host`
    and `request.scheme` already carry the values our own proxies appended, never a client's. A scheme
    other than http/https (a proxy passing on garbage) falls back to the one the request arrived with.
    """
    configured = current_limits().public_base_url
    if configured:
        return configured
    scheme = request.scheme
    if scheme not in WEB_SCHEMES:
        scheme = request.environ.get("werkzeug.proxy_fix.orig", {}).get("wsgi.url_scheme", "http")
    return f"{scheme}://{request.host}"


def respond(body: BaseModel | list[Any] | dict[str, Any] | None, status: int = 200) -> Response:
    """Serialise a response model (or a list of them) as JSON."""
    if body is None:
        return Response(status=status)
    if isinstance(body, BaseModel):
        payload = body.model_dump_json()
    elif isinstance(body, list):
        payload = "[" + ",".join(b.model_dump_json() if isinstance(b, BaseModel) else json.dumps(b) for b in body) + "]"
    else:
        payload = json.dumps(body)
    return Response(payload, status=status, mimetype="application/json")


class ListAnswer(Generic[M]):
    """A JSON list of `model` made from plain values: one dict of the model's `fields` per item.

    The whole list is validated and serialised in one call each of pydantic's core, where a model per item
    (validated from an ORM object's attributes, then dumped on its own) was most of a photo page's CPU.
    Items must be dicts: pydantic reads any other mapping (a SQLAlchemy RowMapping) through Python calls,
    4 times slower (ops/bench/RESULTS.md, "Photo pages from table rows").
    """

    def __init__(self, model: type[M]) -> None:
        self.fields = tuple(model.model_fields)  # the values each item needs (computed fields come from them)
        self._adapter: TypeAdapter[list[M]] = TypeAdapter(list[model])  # type: ignore[valid-type]

    def respond(self, items: list[dict[str, Any]]) -> Response:
        """200 with the items as a JSON list of the model."""
        body = self._adapter.dump_json(self._adapter.validate_python(items))
        return Response(body, mimetype="application/json")
