from django.core.management.base import BaseCommand

from data_access import selectors
from data_access.management.base import user_errors


class Command(BaseCommand):
    help = ("Show what a study would train on: the theme's classes and image counts, read "
            "the way launch.py reads them.")

    def add_arguments(self, parser):
        parser.add_argument("theme_id", type=int)

    def handle(self, *args, theme_id, **options):
        with user_errors():
            spec = selectors.theme_get_spec(theme_id=theme_id)
        self.stdout.write(
            f"Theme '{spec.name}' (id {spec.id}): {len(spec.samples)} images, "
            f"{spec.num_classes} classes, under {spec.media_root}"
        )
        for label, count in spec.class_counts().items():
            self.stdout.write(f"  {label}: {count}")
