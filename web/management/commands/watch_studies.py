"""The studies' watchdog: the one place that notices a launched study whose driver died
without recording its end, and escalates a cancel that its driver has not obeyed
(SIGTERM, then SIGKILL to its process group, after THEMETUNE_CANCEL_GRACE_S).

    python manage.py watch_studies [--interval 5] [--once]

Run it beside the web server (`make web` does; with gunicorn, start it next to it).
Page views only read, so without it a dead study keeps its last status on the pages."""

from __future__ import annotations

import math
import time

from django.core.management.base import BaseCommand
from django.db import DatabaseError, connection

from tuning.errors import shown_value
from tuning.redact import redact_text
from web.launch import refresh_active

# Each look reads the database: a shorter interval is a busy loop on it.
MIN_INTERVAL_S = 0.5
MAX_INTERVAL_S = 24 * 3600.0


class Command(BaseCommand):
    help = ("Notice launched studies whose driver is gone and escalate cancels they "
            "have not obeyed; every --interval seconds, or --once.")

    def add_arguments(self, parser):
        # Read as text and checked in handle(): a bad value is one line, not argparse's
        # usage block.
        parser.add_argument("--interval", default="5",
                            help=f"seconds between two looks (default 5, at least "
                                 f"{MIN_INTERVAL_S:g})")
        parser.add_argument("--once", action="store_true", help="look once and exit")

    def handle(self, *args, interval: str, once: bool, **options):
        interval = self._checked_interval(interval)
        while True:
            self._look()
            if once:
                return
            time.sleep(interval)

    def _checked_interval(self, given) -> float:
        try:
            seconds = float(given)
        except (TypeError, ValueError):
            seconds = math.nan
        if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:   # nan too
            self.stderr.write(f"error: key '--interval': must be a number of seconds from "
                              f"{MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} (got "
                              f"{shown_value(given)}). Fix: give e.g. --interval 5.")
            raise SystemExit(2)
        return seconds

    def _look(self) -> None:
        try:
            refresh_active()
        except DatabaseError as exc:
            # The database may be restarting: the next look tries again.
            self.stderr.write("themetune: warning: could not read the studies: "
                              f"{redact_text(str(exc))}")
            connection.close()
