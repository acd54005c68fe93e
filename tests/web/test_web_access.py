"""Every route needs a login; launching, cancelling and saving defaults need a
permission; CSRF is on; no image URL reaches outside MEDIA_ROOT; and the production
settings pass `manage.py check --deploy` without a warning."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db

# Routes anyone may open: the login page itself and the language switch.
PUBLIC = {"login", "set_language"}
# route name -> (permission, method): refused (403) to a logged-in user without it.
GUARDED = {
    "study_new": ("launch_study", "get"),
    "best_params_apply": ("launch_study", "post"),
    "study_cancel": ("cancel_study", "post"),
}


def own_routes():
    """(name, pattern) of every route outside the admin."""
    found = []
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver):
            continue  # the admin: checked on its own below
        assert isinstance(entry, URLPattern)
        found.append((entry.name, entry.pattern))
    return found


@pytest.fixture
def urls(theme, make_study):
    study_id = make_study(theme)
    image = theme.images.first()
    values = {"theme_id": theme.id, "image_id": image.id, "study_id": study_id,
              "kind": "history", "path": image.image.name}

    def url_for(name, pattern):
        kwargs = {k: values[k] for k in pattern.converters}
        return reverse(name, kwargs=kwargs)
    return {name: url_for(name, pattern) for name, pattern in own_routes()}


def test_every_route_is_walked():
    names = {name for name, _ in own_routes()}
    assert None not in names, "every route needs a name to be walked"
    assert set(GUARDED) <= names and PUBLIC <= names
    assert len(names) >= 15


@pytest.mark.parametrize("method", ["get", "post"])
def test_every_route_needs_a_login(client, urls, method):
    for name, url in urls.items():
        if name in PUBLIC:
            continue
        response = getattr(client, method)(url)
        assert response.status_code == 302, (name, url, response.status_code)
        assert response["Location"].startswith(reverse("login") + "?next="), (name, url)


def test_the_admin_needs_a_staff_login(client, viewer):
    logins = ("/admin/login/", reverse("login"))
    for url in ("/admin/", "/admin/data_access/tuningstudy/"):
        assert client.get(url)["Location"].startswith(logins)
    client.force_login(viewer)   # logged in, but not staff
    assert client.get("/admin/")["Location"].startswith("/admin/login/")


def test_public_routes(client):
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("set_language"), {"language": "ja", "next": "/"})
    assert response.status_code == 302


def test_launch_cancel_and_apply_need_a_permission(client, urls, viewer, tuner):
    client.force_login(viewer)
    for name, (permission, method) in GUARDED.items():
        response = getattr(client, method)(urls[name])
        assert response.status_code == 403, (name, response.status_code)
    # Pages without a guard open for the same user.
    for name in ("study_list", "study_detail", "theme_list", "theme_detail", "study_plot"):
        assert client.get(urls[name]).status_code == 200, name

    client.force_login(tuner)
    assert client.get(urls["study_new"]).status_code == 200
    assert client.post(urls["best_params_apply"]).status_code == 302
    assert client.post(urls["study_cancel"]).status_code == 302


def test_csrf_is_enforced(tuner, urls):
    client = Client(enforce_csrf_checks=True)
    client.force_login(tuner)
    assert client.post(urls["study_cancel"]).status_code == 403
    assert client.post(urls["best_params_apply"]).status_code == 403


@pytest.mark.parametrize("path", [
    "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "themes/../../../etc/passwd",
    "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "themes/1/..%5c..%5c..%5cetc%5cpasswd",
])
def test_no_path_traversal_through_media_urls(client, viewer, settings, path):
    secret = Path(settings.MEDIA_ROOT).parent / "secret.txt"
    secret.write_text("top secret")
    client.force_login(viewer)
    for candidate in (f"/media/{path}", f"/media/{path.replace('etc/passwd', 'secret.txt')}"):
        response = client.get(candidate)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert response.status_code in (400, 404), (candidate, response.status_code)
        assert b"top secret" not in body and b"root:" not in body


def test_image_urls_take_ids_not_paths(client, viewer, theme):
    client.force_login(viewer)
    image = theme.images.first()
    ok = client.get(reverse("theme_image", args=[theme.id, image.id]))
    assert ok.status_code == 200
    # Another theme's id with this image's id: not found.
    assert client.get(f"/themes/{theme.id + 1}/images/{image.id}/").status_code == 404
    assert client.get(f"/themes/{theme.id}/images/..%2f..%2fetc/").status_code == 404
    # A row that points outside MEDIA_ROOT (edited by hand) is not served either.
    type(image).objects.filter(pk=image.pk).update(image="../../../../etc/passwd")
    assert client.get(reverse("theme_image", args=[theme.id, image.id])).status_code == 404


def check_deploy(**env_vars) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update(DJANGO_SETTINGS_MODULE="web.settings", **env_vars)
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy",
                           "--fail-level", "WARNING"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_has_no_warnings():
    # The README's production settings; DJANGO_DEBUG unset means production.
    result = check_deploy(DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
                          DJANGO_ALLOWED_HOSTS="example.org")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_check_deploy_refuses_a_missing_secret_key():
    result = check_deploy(DJANGO_DEBUG="false", DJANGO_ALLOWED_HOSTS="example.org")
    assert result.returncode != 0
    assert "(themetune.E001) DJANGO_SECRET_KEY is not set" in result.stdout + result.stderr
