"""Input rules shared by the use cases and the API's schemas: text fields, and pydantic errors as FieldErrors."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints, ValidationError

from ..errors import FieldError

# PostgreSQL cannot store a NUL character in text (the driver raises, which was a 500): reject it as a 422.
_NO_NUL = r"^[^\x00]*$"
Title = Annotated[str, StringConstraints(max_length=255, pattern=_NO_NUL)]
Description = Annotated[str, StringConstraints(max_length=10_000, pattern=_NO_NUL)]


def validation_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """Translate pydantic errors into the contract's `errors` list (one entry per failing field)."""
    out = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) if loc else (prefix or "body")
        message = str(err["msg"])
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        out.append(FieldError(field, message))
    return out
