"""Packaging for photo-api: the package, its migrations and the `photo-api` console script."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent

# Test and lint tools, pinned like the runtime so that CI is reproducible.
TEST_REQUIREMENTS = [
    "pytest==9.2.0",
    # The suite's two halves at once (tox.ini: `-n 2`): the end-to-end tests in one process, the rest beside.
    "pytest-xdist==3.8.0",
    "ruff==0.17.6",
    "mypy==2.4.1",
    "schemathesis==4.32.5",
    "hypothesis==6.170.17",
    "types-requests==2.33.0.20261030",
    # tests/test_packaging.py installs the wheel into a fresh virtualenv with it: 5 s where pip took 25.
    "uv==0.13.9",
]


def _requirements(name: str) -> list[str]:
    """Read a requirements file, skipping comments and includes."""
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("#", "-r"))]


setup(
    name="photo-api",
    version="0.1.0",
    description="Photo API: uploads, albums and public shares on Flask + gunicorn/gevent",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Namespace discovery, so that folders without an __init__.py (migrations/versions) ship too.
    packages=find_namespace_packages(include=["photo_api", "photo_api.*"], exclude=["*.__pycache__"]),
    # Every file the package opens at run time; tests/test_packaging.py compares the wheel with the source folder.
    package_data={"photo_api": ["py.typed", "migrations/script.py.mako", "data/*.txt"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": TEST_REQUIREMENTS},
    entry_points={"console_scripts": ["photo-api=photo_api.cli:main"]},
)
