"""WSGI entry point: `gunicorn web.wsgi` (and what `manage.py runserver` serves)."""

import os
import sys

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")

# gunicorn stops at once on a worker that exits with 3 ("failed to boot"); any other
# code would make it start the worker again and again.
_REFUSE_EXIT_CODE = 3


def _load_settings() -> None:
    """web/settings.py exits 2 on a bad variable, after its one line: exit 3 instead."""
    try:
        settings.DEBUG  # noqa: B018  (the first access loads web/settings.py)
    except SystemExit:
        raise SystemExit(_REFUSE_EXIT_CODE) from None


def _refuse_to_serve_without_a_secret_key() -> None:
    """Without DJANGO_SECRET_KEY each process signs with its own random key (see
    web/settings.py): logins would not survive a restart or reach another worker."""
    if settings.DEBUG or settings.SECRET_KEY_FROM_ENV:
        return
    sys.stderr.write("web/wsgi.py: DJANGO_SECRET_KEY must be set to serve the web UI with "
                     "DJANGO_DEBUG off. Fix: export DJANGO_SECRET_KEY=<a long random "
                     "string>, or DJANGO_DEBUG=true for development.\n")
    sys.stderr.flush()
    raise SystemExit(_REFUSE_EXIT_CODE)


_load_settings()
_refuse_to_serve_without_a_secret_key()
application = get_wsgi_application()
