"""README "Web UI" promises about setting it up and deploying it:

- `manage.py web_setup` creates a "tuners" group that may launch, cancel and try the
  model, and runs again without harm;
- production: `DJANGO_DEBUG=false`, `manage.py collectstatic`, `gunicorn web.wsgi`, and
  whitenoise serves the static files (a real gunicorn on 127.0.0.1, real HTTP).
"""

from __future__ import annotations

import io
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from tests.web.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- web_setup

def web_setup(monkeypatch) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO())   # not a terminal: no prompt
    out = io.StringIO()
    call_command("web_setup", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_web_setup_creates_the_tuners_group_and_can_run_again(monkeypatch, django_user_model):
    first = web_setup(monkeypatch)
    assert "No user yet" in first and "createsuperuser" in first
    group = Group.objects.get(name="tuners")
    codenames = {(p.content_type.app_label, p.codename) for p in group.permissions.all()}
    assert codenames == {("data_access", "launch_study"), ("data_access", "cancel_study"),
                         ("data_access", "try_model")}

    web_setup(monkeypatch)   # idempotent: run before every start of the server
    assert Group.objects.filter(name="tuners").count() == 1
    assert group.permissions.count() == 3

    # A member of the group may open the launch form; the same user outside it may not.
    user = django_user_model.objects.create_user("member", password=PASSWORD)
    client = Client()
    client.force_login(user)
    assert client.get(reverse("study_new")).status_code == 403
    user.groups.add(group)
    user = django_user_model.objects.get(pk=user.pk)   # fresh permission cache
    for perm in ("launch_study", "cancel_study", "try_model"):
        assert user.has_perm(f"data_access.{perm}"), perm
    assert client.get(reverse("study_new")).status_code == 200
    # With a user, there is nothing to offer.
    assert "No user yet" not in web_setup(monkeypatch)


# ------------------------------------------------------- collectstatic + gunicorn

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, headers=headers)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture
def production(tmp_path):
    """The environment of a deployment: debug off, a secret key, the allowed host, its
    own database and STATIC_ROOT; behind a TLS proxy that sets X-Forwarded-Proto."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "STATIC_")) and k not in ("DATABASE_URL",)}
    env.update(DJANGO_SETTINGS_MODULE="web.settings", DJANGO_DEBUG="false",
               DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
               DJANGO_ALLOWED_HOSTS="127.0.0.1",
               DJANGO_SECURE_PROXY_SSL_HEADER="true",
               DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
               STATIC_ROOT=str(tmp_path / "static"), MEDIA_ROOT=str(tmp_path / "media"))
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "--noinput", "-v", "0"], ["collectstatic", "--noinput", "-v", "0"]):
        subprocess.run([*manage, *command], env=env, cwd=ROOT, check=True, timeout=300)
    return env


@pytest.mark.slow
def test_collectstatic_then_gunicorn_serves_pages_and_whitenoise_static_files(production,
                                                                             tmp_path):
    static_root = Path(production["STATIC_ROOT"])
    css = sorted(static_root.glob("web/app.*.css"))
    assert css, "collectstatic wrote no hashed web/app.css"
    assert (static_root / "staticfiles.json").is_file()   # whitenoise's manifest

    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = open(tmp_path / "gunicorn.log", "w")
    server = subprocess.Popen([str(gunicorn), "web.wsgi", "--bind", f"127.0.0.1:{port}",
                               "--workers", "1"], env=production, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    proxied = {"X-Forwarded-Proto": "https"}
    try:
        deadline = time.time() + 120
        while True:
            try:
                status, headers, body = get(f"{base}/login/", **proxied)
                break
            except (ConnectionError, urllib.error.URLError):
                assert server.poll() is None and time.time() < deadline, \
                    (tmp_path / "gunicorn.log").read_text()[-3000:]
                time.sleep(0.5)   # polling interval while gunicorn starts
        assert status == 200, body[:2000]
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        page = body.decode()
        assert 'name="password"' in page
        # The page links the hashed stylesheet that collectstatic wrote.
        href = re.search(r'<link rel="stylesheet" href="([^"]+)"', page).group(1)
        assert re.fullmatch(r"/static/web/app\.[0-9a-f]{12}\.css", href), href
        assert Path(href).name in {p.name for p in css}

        status, headers, body = get(f"{base}{href}", **proxied)
        assert status == 200
        assert headers["Content-Type"].startswith("text/css")
        assert body == (static_root / href.removeprefix("/static/")).read_bytes()
        # whitenoise, not Django (which serves no static files with DEBUG off): hashed
        # names are cached for ever, and the compressed copy is sent when accepted.
        assert "immutable" in headers.get("Cache-Control", ""), headers
        status, headers, _ = get(f"{base}{href}", **proxied, **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers.get("Content-Encoding") == "gzip", headers

        # Every other page still needs a login; plain http is sent to https.
        status, headers, _ = get(f"{base}/studies/", **proxied)
        assert status == 302 and "/login/" in headers["Location"]
        status, headers, _ = get(f"{base}/login/")
        assert status == 301 and headers["Location"].startswith("https://")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_gunicorn_refuses_to_serve_without_a_secret_key():
    """The command line runs with a random per-process key; serving must not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(DJANGO_SETTINGS_MODULE="web.settings")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    result = subprocess.run([str(gunicorn), "web.wsgi", "--bind", f"127.0.0.1:{free_port()}",
                             "--workers", "1"], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if "DJANGO_SECRET_KEY" in line]
    assert refusals == ["web/wsgi.py: DJANGO_SECRET_KEY must be set to serve the web UI "
                        "with DJANGO_DEBUG off. Fix: export DJANGO_SECRET_KEY=<a long "
                        "random string>, or DJANGO_DEBUG=true for development."], result.stderr
    assert "Traceback" not in result.stderr
