"""Request and response models shared by the blueprints (pydantic v2; the OpenAPI schemas come from here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    PlainSerializer,
    StringConstraints,
    computed_field,
    field_validator,
)

from ..models import MAX_ID
from ..security import password_weakness

# UTC ISO-8601 with a `Z` suffix, as the contract says (docs/api.md), whatever zone object the value carries.
UtcDatetime = Annotated[
    datetime,
    PlainSerializer(lambda v: v.astimezone(UTC).isoformat().replace("+00:00", "Z"), return_type=str, when_used="json"),
]
PAGE_LIMIT_MAX = 100
PAGE_LIMIT_DEFAULT = 50


class Request(BaseModel):
    """Base of request bodies: unknown fields are ignored, as the service this one replaces did."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class FieldErrorOut(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    request_id: str
    errors: list[FieldErrorOut] | None = Field(default=None, description="only on 422")


class Pagination(BaseModel):
    skip: int = Field(default=0, ge=0, le=MAX_ID)
    limit: int = Field(default=PAGE_LIMIT_DEFAULT, ge=1, le=PAGE_LIMIT_MAX)


Username = Annotated[str, StringConstraints(min_length=3, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]


class RegisterIn(Request):
    email: EmailStr = Field(max_length=254)
    username: Username
    password: Password = Field(
        description="8 to 128 characters; not one character repeated, not one of the most common passwords"
    )

    @field_validator("password")
    @classmethod
    def _not_weak(cls, value: str) -> str:
        reason = password_weakness(value)
        if reason is not None:
            raise ValueError(reason)
        return value


class LoginIn(Request):
    # No control characters: no registered e-mail has one, and PostgreSQL refuses a NUL in a parameter (500).
    email: Annotated[str, StringConstraints(min_length=1, max_length=254, pattern=r"^[^\x00-\x1f\x7f]+$")]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class UserOut(Response):
    id: int
    email: str
    username: str
    is_active: bool
    created_at: UtcDatetime


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class CheckOut(BaseModel):
    status: str
    latency_ms: float | None = None
    circuit: Literal["closed", "open", "half_open"] | None = None
    current: str | None = Field(default=None, description="schema: the database's revision (absent: not migrated)")
    expected: str | None = Field(default=None, description="schema: the newest revision this version knows")


class HealthOut(BaseModel):
    status: Literal["healthy", "unhealthy", "draining"]
    timestamp: UtcDatetime
    instance: str
    version: str
    checks: dict[str, CheckOut]


class LivenessOut(BaseModel):
    status: Literal["alive"]
    timestamp: UtcDatetime
    instance: str
    version: str


class PhotoOut(Response):
    id: int
    owner_id: int
    filename: str
    original_filename: str
    content_type: str
    file_size: int
    title: str | None
    description: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def url(self) -> str:
        """Always the API path: never a storage or CDN URL, which expire and move."""
        return f"/photos/{self.id}/image"


class AlbumOut(Response):
    id: int
    owner_id: int
    name: str
    description: str | None
    cover_photo_id: int | None
    photo_count: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class AlbumWithPhotosOut(AlbumOut):
    photos: list[PhotoOut]


class ShareLinkOut(Response):
    id: int
    album_id: int
    token: str
    is_active: bool
    expires_at: UtcDatetime | None
    view_count: int
    created_at: UtcDatetime
    share_url: str


class SharedPhotoOut(BaseModel):
    """A photo as the public sees it: no owner, no original filename."""

    id: int
    title: str | None
    description: str | None
    content_type: str
    file_size: int
    created_at: UtcDatetime
    url: str


class SharedAlbumOut(BaseModel):
    album_name: str
    album_description: str | None
    photo_count: int
    created_at: UtcDatetime
    photos: list[SharedPhotoOut]
