"""What is wrong with a configuration: one problem per variable and message, all of them in one error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration: the variable it concerns and what is wrong."""

    setting: str
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: Iterable[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))

    def settings_named(self) -> set[str]:
        """The variable names that have at least one problem."""
        return {p.setting for p in self.problems}


def problem(setting: str, message: str) -> ConfigProblem:
    """A problem of the variable named like the field (or override) `setting`."""
    return ConfigProblem(setting.upper(), message)
