"""Reading the settings' raw values with pydantic-settings: the env file, then the environment over it.

Nothing here reads the environment at import time; `load_settings()` calls `read_environment()` once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, DotEnvSettingsSource, EnvSettingsSource

from .problems import ConfigError, ConfigProblem
from .settings import OVERRIDABLE, SERVICES, Settings

ENV_FILE_VARIABLE = "PHOTO_API_ENV_FILE"
OVERRIDES_FIELD = "overrides"


class EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping (os.environ, or a test's dict).

    `_load_env_vars` is the hook pydantic-settings' own DotEnvSettingsSource overrides to read a file
    instead of os.environ; here it reads the mapping `load_settings(environ=...)` was given, so a test's
    environment is the whole environment (tests/test_config.py shows os.environ is not consulted).
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # before super().__init__, which loads the variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


def read_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The raw values of the settings: the env file named by PHOTO_API_ENV_FILE (if any), the environment over it.

    Empty values mean "not set" (`FOO=` in an env file must not become a validation error), and one in
    the environment hides the file's value, as any value there does. The per-dependency overrides
    (STORAGE_RETRY_MAX_TRIES, ...) are gathered into the `overrides` mapping.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    variables: dict[str, str | None] = {}
    env_file = env.get(ENV_FILE_VARIABLE)
    if env_file:
        # pydantic-settings skips a missing env file: a typo in the path would boot on the defaults.
        if not Path(env_file).is_file():
            raise ConfigError([ConfigProblem(ENV_FILE_VARIABLE, f"no such file: {env_file}")])
        from_file = DotEnvSettingsSource(Settings, env_file=env_file)
        values.update(from_file())
        variables.update(from_file.env_vars)
    # The real environment wins over the file, as systemd and docker users expect.
    from_environment = EnvironmentSource(Settings, env)
    values.update(from_environment())
    variables.update(from_environment.env_vars)

    fields = Settings.model_fields
    raw = {k: v for k, v in values.items() if k in fields and k != OVERRIDES_FIELD and not _is_unset(v)}
    raw[OVERRIDES_FIELD] = service_overrides(variables)
    return raw


def service_overrides(variables: Mapping[str, str | None]) -> dict[str, dict[str, str]]:
    """The `{SERVICE}_{VALUE}` variables (lower-cased names) as {service: {value name: raw value}}."""
    overrides: dict[str, dict[str, str]] = {}
    for service in SERVICES:
        for name in OVERRIDABLE:
            value = variables.get(f"{service}_{name}")
            if value is not None and not _is_unset(value):
                overrides.setdefault(service, {})[name] = value
    return overrides


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")
