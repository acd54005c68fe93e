"""Django settings, all read from the environment.

With nothing set, this is a development setup: DEBUG on, SQLite file db.sqlite3 and
media/ at the repository root. A deployment sets DJANGO_DEBUG=false, DJANGO_SECRET_KEY,
DJANGO_ALLOWED_HOSTS and DATABASE_URL (PostgreSQL), runs `manage.py collectstatic` and
serves with gunicorn (`gunicorn web.wsgi`); whitenoise serves the static files. It is
meant to sit behind a TLS proxy: set DJANGO_SECURE_PROXY_SSL_HEADER=true when the proxy
sets X-Forwarded-Proto.
"""

import os
import tempfile
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

# The folder that holds manage.py.
BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be one of {sorted(_TRUE | _FALSE)} (got {raw!r}). "
        f"Fix: set {name}=true or {name}=false."
    )


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        # A guessable key in production lets anyone forge sessions: refuse to start.
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is false. "
            "Fix: export DJANGO_SECRET_KEY=<a long random string>."
        )
    SECRET_KEY = "django-insecure-themetune-development-only-key"

ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "data_access",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Right after SecurityMiddleware, as whitenoise asks: static files skip the rest.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login unless its view is marked login_not_required: a view
    # added later is private by default.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "web.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "web" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "web.context_processors.links",
            ],
        },
    },
]

WSGI_APPLICATION = "web.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
        # A study's driver runs for hours; a dropped server connection should be
        # noticed and reopened rather than failing every later write.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The tuning driver writes trial rows while the web UI reads them: wait for the
    # lock instead of failing at once, and take the write lock at BEGIN so that two
    # writers never deadlock on a lock upgrade.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    )
    # Tests that launch launch.py in a child process need a test database the child
    # can open: a file, not SQLite's default in-memory test database. One per test
    # process, so that two test runs never share it.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("THEMETUNE_TEST_DB")
        or os.path.join(tempfile.gettempdir(), f"themetune-test-{os.getpid()}.sqlite3")
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("ja", _("Japanese"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = os.environ.get("STATIC_URL", "static/")
STATIC_ROOT = os.path.abspath(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.js from the plotly package itself: nothing is fetched at run time.
    "web.staticfinders.PlotlyJsFinder",
]
# Development and tests serve static files straight from the finders; production
# from STATIC_ROOT, filled by collectstatic.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Hashed, compressed names need `collectstatic`: production only.
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
                    if DEBUG else "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Theme images live here; data_access stores paths relative to it, so moving the
# folder only needs MEDIA_ROOT changed.
MEDIA_URL = os.environ.get("MEDIA_URL", "media/")
MEDIA_ROOT = os.path.abspath(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "study_list"
LOGOUT_REDIRECT_URL = "login"

# ---------------------------------------------------------------- production security
# `manage.py check --deploy` passes with DJANGO_DEBUG=false and these defaults.
SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = _env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS",
                                         "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = _env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
if _env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
X_FRAME_OPTIONS = "DENY"

# ---------------------------------------------------------------- themetune web UI
# Where the UI keeps each launched study's config files and log: runs/study-<id>/.
THEMETUNE_RUNS_DIR = os.path.abspath(os.environ.get("THEMETUNE_RUNS_DIR", BASE_DIR / "runs"))
# Folders of the four YAML files that the new-study form can start from: configs/
# itself and each sub-folder holding an optuna_params.yaml (configs/demo, ...).
THEMETUNE_CONFIGS_DIR = os.path.abspath(os.environ.get("THEMETUNE_CONFIGS_DIR",
                                                       BASE_DIR / "configs"))
THEMETUNE_LAUNCH_SCRIPT = os.path.abspath(os.environ.get("THEMETUNE_LAUNCH_SCRIPT",
                                                         BASE_DIR / "launch.py"))
# A Ray cluster's job address (its dashboard, http://HOST:8265): studies run as Ray jobs.
# Unset: each study runs as a local background process that starts its own local Ray.
THEMETUNE_RAY_JOB_ADDRESS = (os.environ.get("THEMETUNE_RAY_ADDRESS")
                             or os.environ.get("RAY_ADDRESS") or "")
# SIGINT first (the driver marks its runs KILLED), then SIGTERM, then SIGKILL.
THEMETUNE_CANCEL_GRACE_S = float(os.environ.get("THEMETUNE_CANCEL_GRACE_S", "30"))
# Links shown in the UI. The MLflow UI of `make mlflow`; Ray's dashboard default port.
THEMETUNE_MLFLOW_UI_URL = os.environ.get("MLFLOW_UI_URL", "http://127.0.0.1:5001").rstrip("/")
THEMETUNE_RAY_DASHBOARD_URL = os.environ.get("RAY_DASHBOARD_URL", (
    THEMETUNE_RAY_JOB_ADDRESS if THEMETUNE_RAY_JOB_ADDRESS.startswith("http")
    else "http://127.0.0.1:8265")).rstrip("/")
# An optuna-dashboard serving the studies' Optuna storage. Unset: no link, unlike the
# two above: a dashboard serves only the one storage it was started on.
THEMETUNE_OPTUNA_DASHBOARD_URL = os.environ.get("OPTUNA_DASHBOARD_URL", "").rstrip("/")
