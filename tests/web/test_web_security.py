"""Hardening promises of the web UI (README "Web UI", production paragraph):

- with DEBUG off, a server error leaves its traceback on stderr (gunicorn's log) and
  nothing of it on the page;
- repeated wrong passwords lock out that user name from that address, on the UI's
  login and the admin's, even for the right password, and nobody else;
- every page sends a Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.decorators import login_not_required
from django.test import Client
from django.urls import path, reverse

from tests.web.conftest import PASSWORD
from web import urls as web_urls

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "planted failure 7f3a"


@login_not_required
def raising_view(request):
    raise RuntimeError(PLANTED)


# The test URLconf of test_a_server_error_is_logged_to_stderr_not_shown: the UI's routes
# and one view that fails.
urlpatterns = [path("raise/", raising_view), *web_urls.urlpatterns]


@pytest.fixture
def request_log():
    """What the 'django.request' logger's stderr handler writes, during the test."""
    handlers = [h for h in logging.getLogger("django.request").handlers
                if isinstance(h, logging.StreamHandler)]
    assert handlers, "no stream handler on the 'django.request' logger (settings.LOGGING)"
    buffer = io.StringIO()
    previous = [handler.setStream(buffer) for handler in handlers]
    yield buffer
    for handler, stream in zip(handlers, previous):
        handler.setStream(stream)


@pytest.mark.urls(__name__)
def test_a_server_error_is_logged_to_stderr_not_shown(settings, request_log, db):
    settings.DEBUG = False
    response = Client(raise_request_exception=False).get("/raise/")
    assert response.status_code == 500
    body = response.content.decode()
    assert PLANTED not in body and "Traceback" not in body and "raising_view" not in body
    log = request_log.getvalue()
    assert "Internal Server Error: /raise/" in log
    assert "Traceback (most recent call last)" in log and f"RuntimeError: {PLANTED}" in log


# ------------------------------------------------------------------- login throttling

def log_in(client: Client, username: str, password: str, *, address: str,
           url: str = "/login/"):
    return client.post(url, {"username": username, "password": password},
                       REMOTE_ADDR=address)


@pytest.fixture
def two_users(django_user_model, settings):
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_user("alice", password=PASSWORD)
    django_user_model.objects.create_user("bob", password=PASSWORD)


def test_wrong_passwords_lock_out_that_user_from_that_address(two_users):
    client = Client()
    for _ in range(2):
        response = log_in(client, "alice", "wrong", address="10.0.0.1")
        assert response.status_code == 200 and "errorbox" in response.content.decode()
    locked = log_in(client, "alice", "wrong", address="10.0.0.1")
    assert locked.status_code == 429
    assert 'id="locked-out"' in locked.content.decode()    # our page, not a bare 429

    # Even the right password is refused now, on the UI's login and the admin's.
    right = log_in(client, "alice", PASSWORD, address="10.0.0.1")
    assert right.status_code == 429 and "_auth_user_id" not in client.session
    admin = log_in(client, "alice", PASSWORD, address="10.0.0.1", url=reverse("admin:login"))
    assert admin.status_code == 429

    # Another user from that address, and the same user from another, still get in.
    assert log_in(Client(), "bob", PASSWORD, address="10.0.0.1").status_code == 302
    assert log_in(Client(), "alice", PASSWORD, address="10.0.0.2").status_code == 302


def test_admin_login_failures_count_too(two_users):
    client = Client()
    for _ in range(3):
        response = log_in(client, "bob", "wrong", address="10.0.0.9",
                          url=reverse("admin:login"))
    assert response.status_code == 429
    assert log_in(client, "bob", PASSWORD, address="10.0.0.9").status_code == 429


def test_the_lockout_page_speaks_the_users_language(two_users):
    client = Client(HTTP_ACCEPT_LANGUAGE="ja")
    for _ in range(3):
        response = log_in(client, "bob", "wrong", address="10.0.0.7")
    page = response.content.decode()
    assert response.status_code == 429 and "ログインの失敗が多すぎます" in page
    assert "3 回失敗" in page and "Too many failed logins" not in page


def test_a_good_login_resets_the_count(two_users):
    client = Client()
    for _ in range(2):
        log_in(client, "alice", "wrong", address="10.0.0.3")
    assert log_in(client, "alice", PASSWORD, address="10.0.0.3").status_code == 302
    client = Client()
    for _ in range(2):
        assert log_in(client, "alice", "wrong", address="10.0.0.3").status_code == 200


# ------------------------------------------------------------------------------ CSP

@pytest.mark.django_db
def test_pages_send_a_content_security_policy_without_inline_script(client, viewer):
    anonymous = [client.get(url) for url in (reverse("login"), reverse("admin:login"))]
    client.force_login(viewer)
    for response in anonymous + [client.get(reverse("study_list")),
                                 client.get(reverse("theme_list"))]:
        url = response.request["PATH_INFO"]
        assert response.status_code == 200, url
        policy = dict(part.strip().split(" ", 1)
                      for part in response["Content-Security-Policy"].split(";"))
        assert policy["default-src"] == "'self'", url
        assert policy["script-src"] == "'self'", url
        assert policy["frame-ancestors"] == "'none'", url


def run_with(env_vars: dict[str, str], code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THEMETUNE_LOGIN_")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **env_vars},
                          capture_output=True, text=True, timeout=60)


def test_the_lockout_limit_and_cool_off_come_from_the_environment():
    result = run_with({"THEMETUNE_LOGIN_FAILURE_LIMIT": "8",
                       "THEMETUNE_LOGIN_COOLOFF_MINUTES": "2.5"},
                      "import web.settings as s; print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME)")
    assert result.stdout.split() == ["8", "0:02:30"], result.stderr
    bad = run_with({"THEMETUNE_LOGIN_FAILURE_LIMIT": "many"}, "import web.settings")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "web/settings.py: THEMETUNE_LOGIN_FAILURE_LIMIT must be a positive whole number "
        "(got 'many'). Fix: set THEMETUNE_LOGIN_FAILURE_LIMIT=5 or unset it."]
