"""Settings: every environment variable, typed and validated in one place.

`load_settings()` reads the process environment (and the env file named by `PHOTO_API_ENV_FILE`) with
pydantic-settings, checks types and ranges field by field and then the cross-field and production
rules, and raises one `ConfigError` that lists *every* problem. Nothing here reads the environment at
import time. The modules: `settings` (the fields), `sources` (reading), `rules` (between settings),
`problems` (the error), `strength` (what a production secret must be), `redaction` (URLs without their
credentials), `bootstrap` (the embedded development setup).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .bootstrap import bootstrap_development, development_defaults
from .problems import ConfigError, ConfigProblem, problem
from .redaction import redact_url, redact_urls
from .rules import RULES, connection_budget
from .settings import (
    OVERRIDABLE,
    SERVICES,
    ResilienceValues,
    Service,
    ServiceOverride,
    Settings,
    detect_instance_ip,
    override_variable,
)
from .sources import ENV_FILE_VARIABLE, OVERRIDES_FIELD, read_environment


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from the environment plus `overrides`; raise ConfigError listing every problem.

    `environ` replaces os.environ (which is then not read at all); `overrides` are field values
    (`db_pool_size=3`) that win over both.
    """
    raw: dict[str, Any] = {**read_environment(environ), **overrides}
    problems: list[ConfigProblem] = []
    failed: set[str] = set()
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        for err in exc.errors():
            name = _setting_of(err["loc"])
            failed.add(name)
            problems.append(problem(name, _describe(err)))
        # Validate the rest again without the broken values so the rules below can still report.
        settings = Settings(**_without(raw, failed))
    for fields, rule in RULES:
        if not failed.intersection(fields):
            problems.extend(rule(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _setting_of(loc: tuple[int | str, ...]) -> str:
    """The field, or for an override the variable (lower case), that a validation error is about."""
    if len(loc) >= 3 and loc[0] == OVERRIDES_FIELD:
        return f"{loc[1]}_{loc[2]}"  # ("overrides", "storage", "retry_max_tries")
    return str(loc[0]) if loc else "?"


def _without(raw: dict[str, Any], failed: set[str]) -> dict[str, Any]:
    """`raw` without the values named in `failed` (fields, and overrides by their variable's name)."""
    kept = {k: v for k, v in raw.items() if k not in failed}
    per_service = kept.get(OVERRIDES_FIELD)
    if isinstance(per_service, Mapping):
        kept[OVERRIDES_FIELD] = {
            service: {k: v for k, v in values.items() if f"{service}_{k}" not in failed}
            if isinstance(values, Mapping)
            else values
            for service, values in per_service.items()
        }
    return kept


def _describe(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "literal_error":
        return msg.replace("Input should be", "must be one of:").replace("'", "")
    return msg


__all__ = [
    "ENV_FILE_VARIABLE",
    "OVERRIDABLE",
    "SERVICES",
    "ConfigError",
    "ConfigProblem",
    "ResilienceValues",
    "Service",
    "ServiceOverride",
    "Settings",
    "bootstrap_development",
    "connection_budget",
    "detect_instance_ip",
    "development_defaults",
    "load_settings",
    "override_variable",
    "read_environment",
    "redact_url",
    "redact_urls",
]
