"""Shared by the commands: user errors end with exit code 2 and one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError

from data_access.db import database_errors_as_user_errors
from tuning.errors import USER_ERROR_EXIT_CODE, ThemetuneError


@contextmanager
def user_errors() -> Iterator[None]:
    try:
        with database_errors_as_user_errors():
            yield
    except ThemetuneError as exc:
        # CommandError prints "CommandError: <line>" and exits without a traceback.
        raise CommandError(exc.one_line(), returncode=USER_ERROR_EXIT_CODE) from exc
