"""The one rule for a missing prerequisite (PostgreSQL, Swift, a Debian tool): skip on a developer machine,
fail in CI, where everything the suite needs must be there (`CI` set, as every CI service sets it).
"""

from __future__ import annotations

import os
from typing import NoReturn


def in_ci() -> bool:
    """True when the suite runs in CI."""
    return bool(os.environ.get("CI"))


def unavailable(message: str) -> NoReturn:
    """Skip the test because `message` says what is missing; fail it instead in CI."""
    # Imported here so that the benchmarks, which use the harness without pytest, need no pytest.
    import pytest

    if in_ci():
        pytest.fail(f"required in CI: {message}")
    pytest.skip(message)
