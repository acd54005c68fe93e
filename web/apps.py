from django.apps import AppConfig


class WebConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "web"
    verbose_name = "themetune web UI"

    def ready(self):
        from web import checks  # noqa: F401  (registers the deploy checks)
