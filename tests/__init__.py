"""photo-api's test suite. It tests the package as installed, which in CI is the built wheel.

pytest puts the checkout's root on `sys.path` so that `tests` can be imported; the root also holds the
`photo_api` source folder, which would then shadow the installed package, and a file missing from the
wheel would go unnoticed. So the root moves to the *end* of `sys.path` here, before anything imports
`photo_api`: the installed package wins, and `tests` (never installed) still comes from the checkout.
tox installs the wheel and sets `PHOTO_API_TEST_INSTALLED=1`, under which the suite refuses to run
against the source folder at all.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALLED_VARIABLE = "PHOTO_API_TEST_INSTALLED"


def _is_repo(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() == REPO
    except OSError:
        return False


def _checkout_last() -> None:
    found = [entry for entry in sys.path if _is_repo(entry)]
    if found:
        sys.path[:] = [entry for entry in sys.path if not _is_repo(entry)] + [str(REPO)]


def _require_installed_package() -> None:
    import photo_api

    location = Path(photo_api.__file__).resolve()
    if location.parent == REPO / "photo_api":
        raise RuntimeError(
            f"{INSTALLED_VARIABLE} is set but photo_api was imported from the checkout ({location}), "
            "not from the installed package: install the wheel non-editable (tox does: package = wheel)"
        )


def python_child(script: str) -> list[str]:
    """The command that runs `script` in a fresh interpreter importing the installed `photo_api` and this `tests`.

    `-P` keeps the working directory off `sys.path` (it may be the checkout); the checkout is appended
    last, for `tests` only, as in this process.
    """
    prelude = f"import sys; sys.path.append({str(REPO)!r})\n"
    return [sys.executable, "-P", "-c", prelude + textwrap.dedent(script)]


_checkout_last()
if os.environ.get(INSTALLED_VARIABLE):
    _require_installed_package()
