"""`manage.py check --deploy` checks of this project's own settings."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def secret_key_from_environment(app_configs, **kwargs):
    """Django's own check passes the random per-process key web/settings.py falls back
    to; serving with it loses every login on a restart, so a deployment must set one."""
    if settings.SECRET_KEY_FROM_ENV:
        return []
    return [Error("DJANGO_SECRET_KEY is not set: every process signs with its own random "
                  "key.", hint="export DJANGO_SECRET_KEY=<a long random string>.",
                  id="themetune.E001")]
