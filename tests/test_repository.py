"""The repository documents itself: no tracked file points at notes or paths outside the checkout.

A user who clones only this repository must find everything it refers to: the HTTP contract, the
operations guide and the NHN Cloud contracts live in docs/. This test reads every git-tracked file
(no network, well under a second) and fails, naming file:line, on

* a path into a sibling folder of the checkout, or a note kept outside it, named by its file name;
* a relative link in a tracked Markdown file whose target does not exist in the checkout.

The forbidden names are assembled from pieces below, so that this file does not trip over itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Matched case-sensitively: upper-case note names, so that docs/api.md and docs/operations.md stay allowed.
CASE_SENSITIVE = ("API" + ".md", "OPERATIONS" + ".md", "STYLE" + ".md", "STYLE" + " rule")
# Matched in any case.
ANY_CASE = (
    "../" + "shared",
    "research" + " notes",
    "nhn-apis" + ".md",
    "runtime" + "-research",
    "seed" + "-stability",
    "stability" + " report",
)
FORBIDDEN = re.compile("|".join([*(re.escape(s) for s in CASE_SENSITIVE), *(f"(?i:{re.escape(s)})" for s in ANY_CASE)]))

# [text](target) and [text](target "title"); reference definitions `[label]: target`.
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^\"']*[\"'])?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
CODE_SPAN = re.compile(r"`+[^`\n]*`+")


def tracked_files() -> list[str]:
    """The checkout's git-tracked files (relative paths), or a skip (a failure in CI) outside a git checkout."""
    try:
        result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        message = f"{ROOT} is not a git checkout (or git is missing): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [name for name in result.stdout.decode().split("\0") if name]


def text_lines(relative: str) -> list[str] | None:
    """The lines of a tracked text file; None for a binary or a file missing from the working tree."""
    try:
        data = (ROOT / relative).read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace").splitlines()


def markdown_targets(lines: list[str]) -> Iterator[tuple[int, str]]:
    """(line number, link target) of every link in Markdown text, outside code blocks and code spans."""
    in_fence = False
    for number, line in enumerate(lines, start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        prose = CODE_SPAN.sub("", line)
        for match in INLINE_LINK.finditer(prose):
            yield number, match.group(1)
        definition = REFERENCE_LINK.match(prose)
        if definition:
            yield number, definition.group(1)


def broken_link(source: str, target: str) -> bool:
    """True when a relative link of tracked file `source` names a path that does not exist here."""
    if URL_SCHEME.match(target) or target.startswith(("#", "//")):
        return False  # a URL (http:, mailto:, …) or an anchor in the same page
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return False
    base = ROOT if path.startswith("/") else (ROOT / source).parent
    return not (base / path.lstrip("/")).exists()


def test_no_reference_to_notes_outside_the_repository() -> None:
    found = []
    for relative in tracked_files():
        lines = text_lines(relative)
        for number, line in enumerate(lines or [], start=1):
            for match in FORBIDDEN.finditer(line):
                found.append(f"{relative}:{number}: {match.group(0)!r} in: {line.strip()[:160]}")
    assert not found, "references to places outside the repository:\n" + "\n".join(found)


def test_relative_markdown_links_resolve() -> None:
    broken = []
    for relative in tracked_files():
        if not relative.endswith(".md"):
            continue
        for number, target in markdown_targets(text_lines(relative) or []):
            if broken_link(relative, target):
                broken.append(f"{relative}:{number}: {target}")
    assert not broken, "relative links to paths that do not exist in the checkout:\n" + "\n".join(broken)


def test_the_checks_can_fail() -> None:
    """The patterns find what they are meant to find (and allow what they must allow)."""
    assert FORBIDDEN.search("see " + "../" + "shared/spec/x")
    assert FORBIDDEN.search("(Research" + " Notes §5)")
    assert FORBIDDEN.search("the " + "API" + ".md contract")
    assert not FORBIDDEN.search("docs/api.md and docs/operations.md")
    assert list(markdown_targets(["[a](../missing.md) `[b](nope.md)`", "```", "[c](x.md)", "```"])) == [
        (1, "../missing.md")
    ]
    assert broken_link("docs/x.md", "../no-such-file.md")
    assert not broken_link("README.md", "https://example.com/x.md")
    assert not broken_link("README.md", "#configuration")
    assert not broken_link("README.md", "tests/test_repository.py#L1")
