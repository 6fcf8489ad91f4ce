"""What ships: the wheel built from this checkout holds every file of the package, and installed into a fresh
virtualenv (the way a VM gets it) it migrates PostgreSQL, serves the embedded default, and refuses loudly to
migrate or serve when its migrations are missing.

The wheel is built from a copy of the files git knows (tracked, or new and not ignored), the way a clean
clone builds it: never from a checkout's leftovers such as an old `build/` folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, inspect

from photo_api.db import driver_url
from photo_api.models import Base
from tests import REPO
from tests.harness.ci import unavailable
from tests.harness.databases import pg_database
from tests.harness.env import production_env
from tests.harness.server import ServeProcess, run_command
from tests.harness.users import Users

pytestmark = pytest.mark.slow

BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 600
CLI_TIMEOUT_S = 120
HTTP_TIMEOUT_S = 10


def repository_files() -> list[str]:
    """The files of the checkout as a clean clone has them (plus new files not yet committed)."""
    if not (REPO / ".git").exists():
        unavailable("the packaging tests build from a git checkout, and this is not one")
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    return [name for name in out.stdout.decode().split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel` builds from a clean copy of the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in repository_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(source)],
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    (built,) = out.glob("photo_api-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel installed (dependencies from the index): its bin/ folder.

    Installed with uv rather than pip (docs/deploy.md's command): the same wheel, the same dependency
    metadata resolved against the same index, in 5 s instead of pip's 25 s, which the suite's time
    budget needs. What is checked is the wheel's content and declared dependencies, not the installer.
    """
    from uv import find_uv_bin

    venv = tmp_path_factory.mktemp("venv")
    uv = find_uv_bin()
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, timeout=CLI_TIMEOUT_S)
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return venv / "bin"


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    with pg_database("photo_api_wheel", migrated=False) as url:
        yield url


def cli(bin_dir: Path, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_command(str(bin_dir / "photo-api"), *args, env=env, cwd=cwd, timeout=CLI_TIMEOUT_S)


def installed_package(bin_dir: Path) -> Path:
    out = subprocess.run(
        [str(bin_dir / "python"), "-P", "-c", "import photo_api, os; print(os.path.dirname(photo_api.__file__))"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return Path(out.stdout.strip())


def test_the_wheel_holds_every_file_of_the_package(wheel: Path) -> None:
    package = {name for name in repository_files() if name.startswith("photo_api/")}
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
    # Every file the package opens at run time (migrations, the Alembic template, py.typed) is in the
    # source folder, so "the same files" is the whole check; nothing else may ride along either.
    assert sorted(package - shipped) == [], "missing from the wheel"
    assert sorted(shipped - package) == [], "in the wheel but not in the source folder"
    assert any(name.startswith("photo_api/migrations/versions/") for name in shipped)


def test_the_installed_wheel_migrates_an_empty_postgresql_database(
    fresh_install: Path, empty_pg_url: str, tmp_path: Path
) -> None:
    env = production_env(empty_pg_url, tmp_path / "storage")
    upgraded = cli(fresh_install, "db", "upgrade", env=env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    current = cli(fresh_install, "db", "current", env=env, cwd=tmp_path)
    assert current.returncode == 0, current.stdout + current.stderr
    assert current.stdout.strip().endswith("up to date")
    engine = create_engine(driver_url(empty_pg_url))
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables, "every table of the models exists"


def test_the_installed_wheel_serves_the_embedded_default(fresh_install: Path, tmp_path: Path) -> None:
    home = tmp_path / "newcomer"
    home.mkdir()
    server = ServeProcess({}, cwd=home, log_dir=tmp_path / "serve", script=str(fresh_install / "photo-api"))
    with server.start():
        Users.at(server.url(), timeout=HTTP_TIMEOUT_S).register()
        r = requests.get(server.url("/health"), timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, r.text


def test_an_install_without_its_migrations_refuses_to_migrate_or_serve(
    fresh_install: Path, empty_pg_url: str, tmp_path: Path
) -> None:
    # Last in this module: it breaks the shared install, the way the release this test guards against was broken.
    versions = installed_package(fresh_install) / "migrations" / "versions"
    for script in versions.glob("*.py"):
        script.unlink()
    shutil.rmtree(versions / "__pycache__", ignore_errors=True)

    env = production_env(empty_pg_url, tmp_path / "storage")
    result = cli(fresh_install, "db", "upgrade", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "no migration found" in result.stderr and "Traceback" not in result.stderr
    engine = create_engine(driver_url(empty_pg_url))
    assert inspect(engine).get_table_names() == []  # nothing was created, not even alembic_version
    engine.dispose()

    home = tmp_path / "newcomer"
    home.mkdir()
    result = cli(fresh_install, "serve", env={}, cwd=home)
    assert result.returncode == 1
    assert "no migration found" in result.stderr
