"""Which database we talk to, and what to tell the user when it cannot be used."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection

from tuning.errors import DatabaseUnusableError, ThemetuneError
from tuning.redact import redact_text

MIGRATE_FIX = "run `python manage.py migrate` (with the same DATABASE_URL)."
CONNECT_FIX = "check DATABASE_URL and that the database server is running and reachable."


def database_description() -> str:
    """The database in use, e.g. 'sqlite:/repo/db.sqlite3' or
    'postgresql://tune@db.local:5432/themetune'. Never contains the password."""
    settings_dict = connection.settings_dict
    name = str(settings_dict.get("NAME") or "")
    if connection.vendor == "sqlite":
        return f"sqlite:{name}"
    user = settings_dict.get("USER") or ""
    host = settings_dict.get("HOST") or "localhost"
    port = settings_dict.get("PORT") or ""
    netloc = f"{user}@{host}" if user else host
    if port:
        netloc += f":{port}"
    return f"{connection.vendor}://{netloc}/{name}"


def _first_line(exc: BaseException) -> str:
    # Driver messages may quote the URL or a "password=..." pair: never the password.
    text = redact_text(str(exc).strip())
    return text.splitlines()[0] if text else type(exc).__name__


def explain_database_error(exc: DatabaseError) -> DatabaseUnusableError:
    """Turn a failed query into a one-line error that says which fix applies."""
    # Imported here: models import this module's callers, not the other way round.
    from data_access.models import Theme

    where = database_description()
    try:
        tables = set(connection.introspection.table_names())
    except DatabaseError as probe_exc:
        return DatabaseUnusableError(
            f"Cannot use database {where}: {_first_line(probe_exc)}.", fix=CONNECT_FIX
        )
    if Theme._meta.db_table not in tables:
        return DatabaseUnusableError(f"Database {where} has no themetune tables.", fix=MIGRATE_FIX)
    # The tables exist but a query failed: most often a schema one migration behind.
    return DatabaseUnusableError(
        f"Query failed on database {where}: {_first_line(exc)}.",
        fix="run `python manage.py migrate`; if nothing is left to apply, " + CONNECT_FIX,
    )


def check_database_settings() -> None:
    """DATABASE_URL can be parsed and its backend's driver is installed: else one line.
    web/settings.py keeps a bad value's reason instead of failing with a traceback."""
    reason = getattr(settings, "DATABASE_URL_ERROR", "")
    if reason:
        example = ("set DATABASE_URL to e.g. sqlite:////abs/db.sqlite3 or "
                   "postgresql://USER@HOST/NAME, or unset it (db.sqlite3).")
        raise DatabaseUnusableError(
            f"{reason}.", key="DATABASE_URL",
            fix=f"install that driver, or {example}" if "driver" in reason else example)


def check_media_root() -> None:
    """MEDIA_ROOT, where imported images are copied, is a writable folder (or one that
    can be made): checked before a theme row is written, so that nothing is left half."""
    root = os.path.abspath(settings.MEDIA_ROOT)
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ThemetuneError(f"MEDIA_ROOT {root} is not a folder ({existing} is a file).",
                             key="MEDIA_ROOT", fix="point MEDIA_ROOT at a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ThemetuneError(f"MEDIA_ROOT {root} cannot be written ({existing} is read-only).",
                             key="MEDIA_ROOT",
                             fix="make the folder writable, or point MEDIA_ROOT elsewhere.")


@contextmanager
def database_errors_as_user_errors() -> Iterator[None]:
    """For code that a user runs directly (commands, launch.py's theme read): an
    unusable DATABASE_URL, an unreachable or unmigrated database is a user error, not a
    traceback."""
    check_database_settings()
    try:
        yield
    except ImproperlyConfigured as exc:
        # Raised when the backend's driver (e.g. psycopg) is missing.
        raise DatabaseUnusableError(
            f"Cannot use the database of DATABASE_URL: {_first_line(exc)}",
            fix="install the driver (`pip install 'psycopg[binary]'` for PostgreSQL) "
            "or " + CONNECT_FIX,
        ) from exc
    except DatabaseError as exc:
        raise explain_database_error(exc) from exc
