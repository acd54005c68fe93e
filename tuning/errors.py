"""Errors a user can cause. Each ends the program with exit code 2 and one line.

The message states the rule, then the offending value, and names the file and key
where there is one, so that the user can fix it without reading a traceback.
"""

from __future__ import annotations

USER_ERROR_EXIT_CODE = 2


STUDY_STOPPED_EXIT_CODE = 1


class Reported(Exception):
    """An error told to the user in one line (file, key, rule, fix): no traceback."""

    exit_code = USER_ERROR_EXIT_CODE

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 fix: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = f"{': '.join(where)}: " if where else ""
        suffix = f" Fix: {self.fix}" if self.fix else ""
        return f"{prefix}{self.message}{suffix}"


class ThemetuneError(Reported):
    """Base class of every error a user can cause (bad config, bad data, unknown theme),
    found before the study starts: exit code 2."""


class StudyStoppedError(Reported):
    """The study started and could not finish (no trial finished, the tracking server
    stayed away): exit code 1; what finished is kept."""

    exit_code = STUDY_STOPPED_EXIT_CODE


class ConfigError(ThemetuneError):
    """A YAML config file is missing, unparsable, or breaks a rule."""


class ThemeError(ThemetuneError):
    """The theme does not exist, is empty, or does not fit the configs."""


class DataError(ThemetuneError):
    """An image of the theme cannot be read, or the data cannot be split as asked."""


class StorageError(ThemetuneError):
    """An Optuna storage URL, study name or Tune storage path cannot be used."""


class MetricError(ThemetuneError):
    """The study's metric was never reported by any trial."""
