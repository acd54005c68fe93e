#!/usr/bin/env python
"""Django's command-line utility for themetune (import_theme, list_themes, migrate, ...)."""

import os
import sys


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    import django
    from django.core.management import execute_from_command_line

    django.setup()
    from data_access.db import check_database_settings
    from tuning.errors import Reported

    try:
        # A DATABASE_URL that cannot be used is one line for every command (migrate,
        # runserver...), not a traceback from the first query.
        check_database_settings()
    except Reported as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    execute_from_command_line(sys.argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
