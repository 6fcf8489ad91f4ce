"""Request and response models shared by the blueprints (pydantic v2; the OpenAPI schemas come from here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    computed_field,
    field_validator,
)

from ..models import MAX_ID, NO_STRIPPED_COPY
from ..security import password_weakness


def _in_utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


# UTC ISO-8601 with a `Z` suffix, as the contract says (docs/api.md), whatever zone object the value carries:
# converted to UTC when the model is made, then written by pydantic's core, which writes UTC as `Z` (a
# Python serializer per value made the dump of a page of photos 45 % slower).
UtcDatetime = Annotated[datetime, AfterValidator(_in_utc)]
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


class PhotoListQuery(Pagination):
    sort: Literal["created_at", "taken_at"] = Field(
        default="created_at", description="upload time, or when the photo was taken (photos without come last)"
    )
    order: Literal["desc", "asc"] = "desc"
    taken_after: AwareDatetime | None = Field(default=None, description="taken at or after (ISO 8601 with zone)")
    taken_before: AwareDatetime | None = Field(default=None, description="taken before (ISO 8601 with zone)")


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
    queue_depth: int | None = Field(default=None, description="jobs: jobs waiting (queued or scheduled for a retry)")
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


ProcessingStatusOut = Literal["pending", "ready", "failed"]


class Location(BaseModel):
    """Where the photo was taken, from its GPS tags: shown to its owner only."""

    latitude: float
    longitude: float
    altitude: float | None = Field(default=None, description="metres above sea level")


def _offset_text(minutes: int | None) -> str | None:
    if minutes is None:
        return None
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class _Rendered(Response):
    """What every view of a photo carries about its processing: state, placeholder, renditions, size."""

    id: int
    processing_status: ProcessingStatusOut = Field(
        description="pending: renditions and metadata not made yet; ready; failed (see processing_error)"
    )
    thumbhash: str | None = Field(description="ThumbHash placeholder, base64 (~25 bytes); null until ready")
    width: int | None = Field(description="pixels, upright (after the EXIF orientation); null until ready")
    height: int | None

    def _rendition_url(self, prefix: str, name: str) -> str | None:
        return f"{prefix}/photos/{self.id}/{name}" if self.processing_status == "ready" else None


class PhotoOut(_Rendered):
    owner_id: int
    filename: str
    original_filename: str
    content_type: str
    file_size: int
    title: str | None
    description: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    processing_error: str | None = Field(description="why processing failed, for the owner")
    taken_at: UtcDatetime | None = Field(
        description="EXIF DateTimeOriginal in UTC; without `taken_at_offset` it is the camera's clock read as UTC"
    )
    taken_at_offset_minutes: int | None = Field(exclude=True)
    camera_make: str | None
    camera_model: str | None
    orientation: int | None = Field(description="the EXIF orientation (1-8) of the original; renditions are upright")
    gps_latitude: float | None = Field(exclude=True)
    gps_longitude: float | None = Field(exclude=True)
    gps_altitude: float | None = Field(exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def url(self) -> str:
        """Always the API path: never a storage or CDN URL, which expire and move."""
        return f"/photos/{self.id}/image"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def thumbnail_url(self) -> str | None:
        """The ~256-pixel rendition (API path); null until processing is ready."""
        return self._rendition_url("", "thumbnail")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def preview_url(self) -> str | None:
        """The ~1440-pixel rendition (API path); null until processing is ready."""
        return self._rendition_url("", "preview")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def taken_at_offset(self) -> str | None:
        """The camera's UTC offset when the photo was taken (e.g. +09:00); null when it did not record one."""
        return _offset_text(self.taken_at_offset_minutes)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def location(self) -> Location | None:
        """GPS position from the original's EXIF: only ever in the owner's own views."""
        if self.gps_latitude is None or self.gps_longitude is None:
            return None
        return Location(latitude=self.gps_latitude, longitude=self.gps_longitude, altitude=self.gps_altitude)


class UploadedPhotoOut(PhotoOut):
    """The answer to an upload (multipart, or presigned confirm)."""

    duplicate: bool = Field(
        default=False,
        description="true: you already had a photo with exactly these bytes; it is answered (status 200) and "
        "nothing new was stored",
    )


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
    include_metadata: bool = Field(
        description="true: the public gets the originals as stored; false: without EXIF/XMP/GPS (default)"
    )


class SharedPhotoOut(_Rendered):
    """A photo as the public sees it: no owner, no original filename, no camera, no location, no EXIF date."""

    model_config = ConfigDict(from_attributes=True)

    title: str | None
    description: str | None
    content_type: str
    file_size: int
    created_at: UtcDatetime
    url: str
    token: str = Field(exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def thumbnail_url(self) -> str | None:
        """The thumbnail through the share link; null until processing is ready."""
        return self._rendition_url(f"/share/{self.token}", "thumbnail")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def preview_url(self) -> str | None:
        """The preview through the share link; null until processing is ready."""
        return self._rendition_url(f"/share/{self.token}", "preview")


def shared_photo_out(photo: Any, token: str, *, include_metadata: bool = False) -> SharedPhotoOut:
    """A photo of a shared album as the public sees it: without metadata, `content_type` and `file_size`
    describe what its `url` serves (the public copy, or the preview of a HEIC/HEIF) once that is ready."""
    fields = {name: getattr(photo, name) for name in _SHARED_FIELDS}
    if not include_metadata and photo.stripped_key is not None:
        if photo.stripped_key == NO_STRIPPED_COPY or photo.stripped_size is None:
            if photo.rendition_type is not None and photo.preview_size is not None:
                fields.update(content_type=photo.rendition_type, file_size=photo.preview_size)
        else:
            fields["file_size"] = photo.stripped_size
    return SharedPhotoOut.model_validate({**fields, "url": f"/share/{token}/photos/{photo.id}/image", "token": token})


_SHARED_FIELDS = (
    "id",
    "title",
    "description",
    "content_type",
    "file_size",
    "created_at",
    "processing_status",
    "thumbhash",
    "width",
    "height",
)


class SharedAlbumOut(BaseModel):
    album_name: str
    album_description: str | None
    photo_count: int
    created_at: UtcDatetime
    photos: list[SharedPhotoOut]
