"""Errors a user can cause. Each ends the program with exit code 2 and one line.

The message states the rule, then the offending value, and names the file and key
where there is one, so that the user can fix it without reading a traceback.
"""

from __future__ import annotations

import reprlib

USER_ERROR_EXIT_CODE = 2

# Parts of a one-line error that may carry what the user wrote are capped, so that a
# huge value (an alias bomb, a pasted file) cannot turn one line into megabytes.
# Our own messages may list several files (unreadable images) with full paths.
MAX_MESSAGE_CHARS = 1500
# A value the user wrote, echoed inside a message.
MAX_VALUE_CHARS = 200
MAX_KEY_CHARS = 200
MAX_FILE_CHARS = 300
# The fix is the program's own text, but may list every allowed key.
MAX_FIX_CHARS = 1000
# Redaction looks this far past a cut, so that a URL crossing it is masked before the
# cut could leave the start of its password in view.
_REDACT_MARGIN = 2000

_VALUE_REPR = reprlib.Repr()
_VALUE_REPR.maxstring = 120
_VALUE_REPR.maxlong = 60
_VALUE_REPR.maxother = 120
_VALUE_REPR.maxlevel = 3
_VALUE_REPR.maxlist = _VALUE_REPR.maxtuple = _VALUE_REPR.maxset = 8
_VALUE_REPR.maxdict = 6


STUDY_STOPPED_EXIT_CODE = 1


def shorten(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with its full length said, when longer."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def shown_value(value: object) -> str:
    """A repr of `value` fit for an error message: bounded in size and in work, as the
    full repr of a huge nested value is never built."""
    try:
        shown = shorten(_VALUE_REPR.repr(value), MAX_VALUE_CHARS)
    except Exception:  # an int past Python's digit limit refuses its own repr
        return f"<{type(value).__name__}>"
    if isinstance(value, str) and len(value) > _VALUE_REPR.maxstring:
        shown += f" ({len(value)} characters)"
    return shown


def _shown_part(text: object, limit: int) -> str:
    """One part of a one-line error: passwords masked, then cut to `limit`."""
    from tuning.redact import redact_text  # no password of a URL in any message
    text = str(text)
    # Only the head is redacted: the masking regex is not linear on megabytes of text.
    shown = redact_text(text[:limit + _REDACT_MARGIN])
    if len(text) <= limit + _REDACT_MARGIN and len(shown) <= limit:
        return shown
    return f"{shown[:limit]}… ({len(text)} characters)"


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
            where.append(_shown_part(self.file, MAX_FILE_CHARS))
        if self.key:
            where.append(f"key '{_shown_part(self.key, MAX_KEY_CHARS)}'")
        prefix = f"{': '.join(where)}: " if where else ""
        suffix = f" Fix: {_shown_part(self.fix, MAX_FIX_CHARS)}" if self.fix else ""
        return f"{prefix}{_shown_part(self.message, MAX_MESSAGE_CHARS)}{suffix}"


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


class MediaRootMissingError(DataError):
    """A node that decodes streaming shards does not see the theme's media root
    (raised in a Ray task; tuning.data.shards re-raises it on the driver)."""


class YamlLimitError(ConfigError):
    """A YAML document past a bound of the config loader (tuning.config.yaml_loader):
    too deep, too large once its aliases expand, or with a repeated key."""


class StorageError(ThemetuneError):
    """An Optuna storage URL, study name or Tune storage path cannot be used."""


class MetricError(ThemetuneError):
    """The study's metric was never reported by any trial."""


class ResumeError(ThemetuneError):
    """`--resume` names no resumable study, or asks to change what it ran with."""


class LeaseHeldError(ThemetuneError):
    """Another live driver holds the study's experiment."""


class TrackingUnreachableError(ThemetuneError):
    """The MLflow tracking server does not answer when a study starts."""


class TrackingStoreError(ThemetuneError):
    """An MLflow store cannot be read, or a model cannot be loaded from it (the message
    is the cause; the caller says what it was doing)."""


class TrackingLostError(StudyStoppedError):
    """The tracking server stayed unreachable longer than the outage budget mid-study:
    the study stops, resumable once the server is back."""


class StudyFailedError(StudyStoppedError):
    """No trial finished: every one failed or was stopped."""


class PredictError(ThemetuneError):
    """predict.py: the model or the paths to label cannot be used."""


class DatabaseUnusableError(ThemetuneError):
    """The database cannot be reached, has no themetune tables, or refuses a query."""


class StudyNotFoundError(ThemetuneError):
    """No study has the id asked for."""


class LaunchError(ThemetuneError):
    """The web: the study could not be started, or its runner cannot be reached."""


class TryModelError(ThemetuneError):
    """The web: the MLflow store cannot be read, or the champion cannot be loaded from it."""
