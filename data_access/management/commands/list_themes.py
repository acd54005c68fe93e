from django.core.management.base import BaseCommand

from data_access import selectors
from data_access.management.base import user_errors


class Command(BaseCommand):
    help = "List the themes with their image and class counts."

    def handle(self, *args, **options):
        with user_errors():
            themes = selectors.theme_list()
            where = selectors.database_description()
        if not themes:
            self.stdout.write(
                f"No themes in database {where}. Import one with "
                "`python manage.py import_theme DIR --name NAME` or "
                "`python manage.py import_demo_theme`."
            )
            return
        width = max(len(t.name) for t in themes)
        self.stdout.write(f"{'id':>5}  {'name':<{width}}  {'images':>7}  {'classes':>7}  created")
        for t in themes:
            self.stdout.write(
                f"{t.id:>5}  {t.name:<{width}}  {t.image_count:>7}  {t.class_count:>7}  "
                f"{t.created_at:%Y-%m-%d %H:%M}"
            )
