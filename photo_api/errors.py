"""Our exception vocabulary: each error knows its HTTP status and title; no Flask here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One failing field of a 422 answer."""

    field: str
    message: str


class AppError(Exception):
    """Base of every error the API answers on purpose; `detail` is safe to show to the client."""

    status: int = 500
    title: str = "Internal Server Error"

    def __init__(self, detail: str | None = None):
        self.detail = detail or self.title
        super().__init__(self.detail)


class BadRequestError(AppError):
    status, title = 400, "Bad Request"


class UnauthorizedError(AppError):
    status, title = 401, "Unauthorized"


class ForbiddenError(AppError):
    status, title = 403, "Forbidden"


class NotFoundError(AppError):
    status, title = 404, "Not Found"


class ClientTimeoutError(AppError):
    """The client stopped sending its request body: its own problem, never a dependency's failure."""

    status, title = 408, "Request Timeout"


class ConflictError(AppError):
    status, title = 409, "Conflict"

    def __init__(self, detail: str | None = None, field: str | None = None):
        super().__init__(detail)
        self.field = field


class GoneError(AppError):
    status, title = 410, "Gone"


class PayloadTooLargeError(AppError):
    status, title = 413, "Content Too Large"


class TooManyRequestsError(AppError):
    """The caller holds too much of something limited; `retry_after` (seconds) says when some of it frees up."""

    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str | None = None, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = retry_after


class UnsupportedMediaTypeError(AppError):
    status, title = 415, "Unsupported Media Type"


class RangeNotSatisfiableError(AppError):
    status, title = 416, "Range Not Satisfiable"

    def __init__(self, size: int):
        super().__init__("Requested range is outside the object")
        self.size = size


class ValidationFailedError(AppError):
    status, title = 422, "Unprocessable Content"

    def __init__(self, errors: list[FieldError], detail: str = "Request validation failed"):
        super().__init__(detail)
        self.errors = errors


class ServiceUnavailableError(AppError):
    """A dependency is down or its circuit is open: the client should retry after `retry_after` seconds."""

    status, title = 503, "Service Unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 5):
        super().__init__(detail)
        self.retry_after = retry_after
