from django.core.management.base import BaseCommand

from data_access import selectors, services
from data_access.db import check_media_root
from data_access.management.base import user_errors


class Command(BaseCommand):
    help = (
        "Import the demo theme: scikit-learn's 1,797 handwritten digits (8x8 grayscale, "
        "classes 0-9; bundled, no download). Prints the theme's id on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", default="digits_demo", help="theme name (default: %(default)s)")
        parser.add_argument(
            "--exist-ok", action="store_true",
            help="if a theme of that name exists, print its id instead of failing "
                 "(for scripts that run this every time)",
        )

    def handle(self, *args, name, exist_ok, **options):
        with user_errors():
            check_media_root()
            if exist_ok:
                existing = selectors.theme_find_id(name=name)
                if existing is not None:
                    self.stdout.write(f"Theme '{name}' already exists (id {existing})")
                    self.stdout.write(str(existing))
                    return
            theme = services.theme_import_demo(name=name)
            images = theme.images.count()
            classes = theme.images.values("label").distinct().count()
        self.stdout.write(
            f"Imported theme '{theme.name}' (id {theme.id}): {images} images, {classes} classes"
        )
        self.stdout.write(str(theme.id))
