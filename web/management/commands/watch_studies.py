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

from tuning.redact import redact_text
from web.launch import refresh_active


class Command(BaseCommand):
    help = ("Notice launched studies whose driver is gone and escalate cancels they "
            "have not obeyed; every --interval seconds, or --once.")

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=5.0,
                            help="seconds between two looks (default 5)")
        parser.add_argument("--once", action="store_true", help="look once and exit")

    def handle(self, *args, interval: float, once: bool, **options):
        if not (0 < interval < math.inf):   # nan and inf too
            self.stderr.write(f"error: --interval: must be a finite number above 0 "
                              f"(got {interval}). Fix: give a number of seconds, e.g. "
                              f"--interval 5.")
            raise SystemExit(2)
        while True:
            self._look()
            if once:
                return
            time.sleep(interval)

    def _look(self) -> None:
        try:
            refresh_active()
        except DatabaseError as exc:
            # The database may be restarting: the next look tries again.
            self.stderr.write("themetune: warning: could not read the studies: "
                              f"{redact_text(str(exc))}")
            connection.close()
