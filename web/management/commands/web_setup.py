"""First-run setup for `make web`: the "tuners" group (launch, cancel, try the champion
model) and, on a terminal, a first user.

    python manage.py web_setup [--demo-theme]

Idempotent: run it before every start of the server."""

from __future__ import annotations

import sys

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.core.management.base import BaseCommand

from data_access import selectors

GROUP = "tuners"
PERMISSIONS = ("launch_study", "cancel_study", "try_model")


class Command(BaseCommand):
    help = ("Create the 'tuners' group (may launch and cancel studies and try the "
            "champion model); on a terminal, "
            "offer to create the first user when there is none.")

    def add_arguments(self, parser):
        parser.add_argument("--demo-theme", action="store_true",
                            help="import the demo digits theme when there is no theme")

    def handle(self, *args, demo_theme: bool, **options):
        group, _ = Group.objects.get_or_create(name=GROUP)
        group.permissions.add(*Permission.objects.filter(
            content_type__app_label="data_access", codename__in=PERMISSIONS))
        if demo_theme and not selectors.theme_list():
            call_command("import_demo_theme", "--exist-ok", stdout=self.stdout)
        if get_user_model().objects.exists():
            return
        if not sys.stdin.isatty():
            self.stdout.write("No user yet: create one with `python manage.py "
                              "createsuperuser`, or add users to the 'tuners' group in "
                              "the admin.")
            return
        self.stdout.write("No user yet: create the first (administrator) account.")
        call_command("createsuperuser")
