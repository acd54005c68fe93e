from django.apps import AppConfig


class DataAccessConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "data_access"
    verbose_name = "themetune data"
