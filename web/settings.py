"""Django settings, all read from the environment.

With nothing set, this is the production setup the README describes: DEBUG off, secure
cookies, HTTPS redirect, HSTS and collectstatic's hashed static files. `make web` (and
the tests) set DJANGO_DEBUG=true for development: DEBUG on, static files from the
finders. A deployment sets DJANGO_SECRET_KEY, DJANGO_ALLOWED_HOSTS and DATABASE_URL
(PostgreSQL), runs `manage.py collectstatic` and serves with gunicorn (`gunicorn
web.wsgi`); whitenoise serves the static files. It is meant to sit behind a TLS proxy:
set DJANGO_SECURE_PROXY_SSL_HEADER=true when the proxy sets X-Forwarded-Proto.

Command-line use (launch.py, predict.py, manage.py import_theme, ...) needs none of
this: without DJANGO_SECRET_KEY each process gets a random key, which only serving
would notice (sessions lost on restart), so web/wsgi.py and `check --deploy` refuse it.
"""

import os
import secrets
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import dj_database_url
from django.utils.translation import gettext_lazy as _

# The folder that holds manage.py.
BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _refuse_setting(message: str) -> NoReturn:
    """A bad environment variable: one line and exit 2 (the project's contract for bad
    input), not an ImproperlyConfigured traceback from every command that loads us."""
    sys.stderr.write(f"web/settings.py: {message}\n")
    raise SystemExit(2)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    _refuse_setting(f"{name} must be one of {sorted(_TRUE | _FALSE)} (got {raw!r}). "
                    f"Fix: set {name}=true or {name}=false.")


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = _env_bool("DJANGO_DEBUG", False)

# Serving needs a fixed key (sessions, password reset links): web/wsgi.py and the
# deploy check refuse to serve without one. The command line signs nothing that
# outlives the process, so a random key per process lets it run with no setup.
SECRET_KEY_FROM_ENV = bool(os.environ.get("DJANGO_SECRET_KEY", ""))
if SECRET_KEY_FROM_ENV:
    SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
elif DEBUG:
    SECRET_KEY = "django-insecure-themetune-development-only-key"
else:
    SECRET_KEY = secrets.token_urlsafe(50)

ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Counts failed logins and locks out a user name from an address (AXES_* below).
    "axes",
    "data_access",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # The Content-Security-Policy header (CONTENT_SECURITY_POLICY below).
    "csp.middleware.CSPMiddleware",
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
    # Last, as django-axes asks: turns a locked-out login into its lockout page.
    "axes.middleware.AxesMiddleware",
]

# Axes' backend only refuses a locked-out login; ModelBackend then checks the password.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
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


def _database_from_env() -> tuple[dict, str]:
    """DATABASE_URL as Django's DATABASES entry, and why it cannot be used ("" when it
    can). A bad value must not fail here with a traceback: launch.py and the commands
    refuse it in one line (data_access.db.check_database_settings)."""
    from tuning.redact import redact_text

    raw = os.environ.get("DATABASE_URL")
    if raw is not None and not raw.strip():
        return {"ENGINE": "django.db.backends.dummy"}, "DATABASE_URL is set but empty"
    conn_max_age = os.environ.get("DJANGO_CONN_MAX_AGE", "0")
    if not conn_max_age.strip().isdigit():   # not to be told as a bad DATABASE_URL below
        _refuse_setting(f"DJANGO_CONN_MAX_AGE must be a whole number of seconds (got "
                        f"{conn_max_age[:40]!r}). Fix: set DJANGO_CONN_MAX_AGE=0, or unset it.")
    try:
        return dj_database_url.config(
            default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
            conn_max_age=int(conn_max_age),
            # A study's driver runs for hours; a dropped server connection should be
            # noticed and reopened rather than failing every later write.
            conn_health_checks=True,
        ), ""
    except ValueError as exc:
        # dj_database_url's first sentence says what is wrong; the rest lists schemes.
        reason = redact_text((str(exc).strip() or type(exc).__name__).split(". ")[0])
        return ({"ENGINE": "django.db.backends.dummy"},
                f"DATABASE_URL {redact_text(raw or '')!r} cannot be parsed ({reason})")


# The module each of Django's backends imports: missing, django.setup() itself fails.
_BACKEND_DRIVERS = {"mysql": ("MySQLdb",), "postgresql": ("psycopg", "psycopg2"),
                    "postgis": ("psycopg", "psycopg2"), "oracle": ("oracledb", "cx_Oracle"),
                    "sqlite3": ("sqlite3",), "spatialite": ("sqlite3",)}


def _missing_driver(engine: str) -> str:
    """The driver that DATABASE_URL's backend needs and this Python lacks ("" if none)."""
    from importlib.util import find_spec

    name = engine.rsplit(".", 1)[-1]
    if engine.startswith("django.") and name in _BACKEND_DRIVERS:
        drivers = _BACKEND_DRIVERS[name]
    elif engine.startswith("django."):
        return ""
    else:   # a third-party backend: its own package
        drivers = (engine.split(".", 1)[0],)
    if any(find_spec(driver) for driver in drivers):
        return ""
    return " or ".join(drivers)


_default_database, DATABASE_URL_ERROR = _database_from_env()
if not DATABASE_URL_ERROR and _missing_driver(_default_database["ENGINE"]):
    DATABASE_URL_ERROR = (f"the driver of DATABASE_URL's database "
                          f"({_missing_driver(_default_database['ENGINE'])}) is not installed")
    _default_database = {"ENGINE": "django.db.backends.dummy"}
DATABASES = {"default": _default_database}

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
LOCALE_PATHS = [BASE_DIR / "web" / "locale"]
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

# Pages load scripts and styles only from this site (app.js, plotly.js, app.css): no
# inline script or style="" attribute, no eval. The plot pages add inline styles for
# plotly.js (web/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}


def _env_positive_number(name: str, default: str, kind: type) -> int | float:
    raw = os.environ.get(name, default)
    kind_word = "whole number" if kind is int else "number"
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not (0 < value <= 1e9):   # also refuses nan; timedelta overflows past that
        _refuse_setting(f"{name} must be a positive {kind_word} (got {raw!r}). "
                        f"Fix: set {name}={default} or unset it.")
    return value


# ---------------------------------------------------------------- login throttling
# After THEMETUNE_LOGIN_FAILURE_LIMIT wrong passwords for one user name from one
# address, that pair is refused (HTTP 429, web/locked_out.html) for the cool-off, even
# with the right password; other users and addresses are not affected. The admin's
# login goes through the same backends, so it is covered too.
AXES_FAILURE_LIMIT = _env_positive_number("THEMETUNE_LOGIN_FAILURE_LIMIT", "5", int)
AXES_COOLOFF_TIME = timedelta(minutes=_env_positive_number(
    "THEMETUNE_LOGIN_COOLOFF_MINUTES", "15", float))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "web/locked_out.html"
# Axes records every successful login too by default; the lockouts are what we need.
AXES_DISABLE_ACCESS_LOG = True

# ---------------------------------------------------------------- server error log
# With DEBUG off Django only mails 500s to ADMINS (none here): send the traceback to
# stderr, which gunicorn and runserver keep in their log. The page itself stays the
# plain "Server Error (500)". Not propagated, so that DEBUG's console handler on the
# "django" logger does not print it twice.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "server": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                   "formatter": "server"},
    },
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "django.security": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}

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
