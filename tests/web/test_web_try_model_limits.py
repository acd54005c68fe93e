"""Try the model, hardened (issue 21, items 3 and 7): a request's pixels are bounded from
the images' headers before anything decodes them, each image is decoded in full once,
and a store that is not one MLflow would only read (another application's SQLite file,
a file that is no database, a server that does not answer) is a form error, never a
500, and is left as it was. Through a real web server (pytest-django's live_server) for
the uploads, Django's test client for the stores."""

from __future__ import annotations

import io
import re
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import requests
from django.urls import reverse
from PIL import Image, ImageFile

from tests.web.test_web_try_model import (  # noqa: F401  (fixtures, by name)
    champion_store,
    digest,
    fresh_cache,
    label_of,
    result_rows,
    tryer,
)
from web import try_model

pytestmark = pytest.mark.django_db


def huge_png(side: int, mode: str = "1") -> bytes:
    """A PNG of side x side pixels in a few KB: 1-bit or palette, all one colour."""
    out = io.BytesIO()
    Image.new(mode, (side, side)).save(out, format="PNG")
    return out.getvalue()


def digit_png(digits_dir: Path) -> bytes:
    return next(digits_dir.glob("1/*.png")).read_bytes()


class Browser:
    """A logged-in session against the live server, posting the form as a browser does
    (with the CSRF token of the page it got)."""

    def __init__(self, live_server, client, user, url: str):
        client.force_login(user)
        self.session = requests.Session()
        self.session.cookies.set("sessionid", client.cookies["sessionid"].value)
        self.url = live_server.url + url

    def post(self, files: list[tuple[str, bytes]]) -> tuple[requests.Response, float]:
        page = self.session.get(self.url, timeout=60)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        started = time.monotonic()
        response = self.session.post(
            self.url, data={"csrfmiddlewaretoken": token},
            files=[("images", (name, data, "image/png")) for name, data in files],
            headers={"Referer": self.url}, timeout=300)
        return response, time.monotonic() - started


@pytest.fixture
def browser(live_server, client, tryer, theme, make_study, champion_store,  # noqa: F811
            monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    make_study(theme)
    return Browser(live_server, client, tryer, reverse("theme_try_model", args=[theme.id]))


def test_small_pngs_of_huge_dimensions_are_refused_fast(browser):
    """Twenty 10000x10000 PNGs (12 KB each) held a server thread for 78 s: each was
    decoded twice. Now each is refused from its header, and the model is not even
    loaded when no image is left to label."""
    bomb = huge_png(10_000)
    assert len(bomb) < 100_000
    response, elapsed = browser.post([(f"big{i}.png", bomb) for i in range(try_model.MAX_FILES)])
    assert response.status_code == 200, response.text[-2000:]
    rows = result_rows(response.text)
    assert len(rows) == try_model.MAX_FILES
    assert all("10000 × 10000 pixels: more than 50 megapixels" in row for row in rows), rows[0]
    assert elapsed < 10, elapsed
    assert try_model.cached_versions() == []


def test_a_request_holds_a_bounded_number_of_pixels(browser, digits_dir):
    """Under the limit per image, over it in all: the images past the request's budget
    are not read; the ones before it are labelled."""
    side = 7_000   # 49 MP: one image's most is 50, a request's 120
    response, _ = browser.post([("a.png", huge_png(side, "P")), ("b.png", huge_png(side, "P")),
                                ("c.png", huge_png(side, "P")), ("digit.png",
                                                                  digit_png(digits_dir))])
    assert response.status_code == 200, response.text[-2000:]
    rows = result_rows(response.text)
    assert [label_of(row) is not None for row in rows] == [True, True, False, True]
    assert "120 megapixels in all" in rows[2]


def test_each_image_is_decoded_in_full_once(client, tryer, theme, make_study,  # noqa: F811
                                            champion_store, monkeypatch):  # noqa: F811
    """The model's decode is the one that counts: no second full decode for the
    thumbnail of a large image (a small one still gets its thumbnail)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    make_study(theme)
    client.force_login(tryer)
    decoded: dict[int, tuple[int, int]] = {}
    load = ImageFile.ImageFile.load

    def counting_load(self):
        if self.tile:   # pixels still to decode: a decode, not the cached image
            decoded[id(self)] = self.size
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    from django.core.files.uploadedfile import SimpleUploadedFile

    big, small = huge_png(4_000, "P"), huge_png(40, "P")
    response = client.post(reverse("theme_try_model", args=[theme.id]),
                           {"images": [SimpleUploadedFile("big.png", big),
                                       SimpleUploadedFile("small.png", small)]})
    rows = result_rows(response.content.decode())
    assert all(label_of(row) is not None for row in rows), rows
    assert list(decoded.values()).count((4_000, 4_000)) == 1, decoded
    assert "data:image/png;base64," in rows[1] and "data:image/png;base64," not in rows[0]


# -- stores the page must only read ------------------------------------------------------


def _silent_port() -> socket.socket:
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


@pytest.fixture
def foreign_stores(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "stores"
    folder.mkdir()
    other = folder / "other_app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES ('keep me')")
    db.close()
    garbage = folder / "garbage.db"
    garbage.write_text("this is not a database\n" * 50)
    empty = folder / "empty.db"
    empty.write_bytes(b"")
    return {"not an MLflow store": other, "not a SQLite database": garbage,
            "empty file, not an MLflow store": empty}


def test_a_store_that_is_not_mlflows_is_a_form_error_and_left_alone(
        client, tryer, theme, make_study, foreign_stores, monkeypatch):  # noqa: F811
    make_study(theme)
    client.force_login(tryer)
    url = reverse("theme_try_model", args=[theme.id])
    for said, path in foreign_stores.items():
        before = digest(path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{path}")
        for response in (client.get(url), client.post(url, {"images": []})):
            html = response.content.decode()
            assert response.status_code == 200, html[-2000:]
            error = re.search(r'<div class="errorbox" id="try-error">(.*?)</div>', html, re.S)
            assert error and said in error.group(1), (said, html[-2000:])
            assert "Traceback" not in html
        assert digest(path) == before, path
        assert sorted(p.name for p in path.parent.iterdir()) == sorted(
            p.name for p in foreign_stores.values()), "a file was created beside it"


def test_a_server_that_does_not_answer_is_a_form_error_within_seconds(
        client, tryer, theme, make_study, monkeypatch):  # noqa: F811
    make_study(theme)
    client.force_login(tryer)
    url = reverse("theme_try_model", args=[theme.id])
    with _silent_port() as silent, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))   # bound, not listening: connection refused
        for sock, said in ((closed, "connection refused"), (silent, "no answer within")):
            monkeypatch.setenv("MLFLOW_TRACKING_URI",
                               f"http://127.0.0.1:{sock.getsockname()[1]}")
            started = time.monotonic()
            response = client.get(url)
            elapsed = time.monotonic() - started
            html = response.content.decode()
            assert response.status_code == 200 and said in html, html[-2000:]
            assert elapsed < 15, (said, elapsed)
