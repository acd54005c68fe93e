from django.core.management.base import BaseCommand

from data_access import services
from data_access.management.base import user_errors


class Command(BaseCommand):
    help = (
        "Import an image folder as a theme: one sub-folder per class, .png/.jpg/.jpeg/.bmp "
        "images (grayscale, RGB or RGBA) anywhere below it; other files are ignored. "
        "Prints the new theme's id on the last line."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", help="folder holding one sub-folder per class")
        parser.add_argument("--name", required=True, help="theme name (unique)")
        parser.add_argument("--description", default="", help="free text")

    def handle(self, *args, directory, name, description, **options):
        with user_errors():
            theme = services.theme_import_folder(
                directory=directory, name=name, description=description
            )
            images = theme.images.count()
            classes = theme.images.values("label").distinct().count()
        self.stdout.write(
            f"Imported theme '{theme.name}' (id {theme.id}): {images} images, {classes} classes"
        )
        self.stdout.write(str(theme.id))
