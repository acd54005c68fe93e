"""Try the model: a theme's real champion (a random ResNet18 logged as the study's pyfunc
and registered in a real MLflow SQLite store, without running a study) labels uploaded
images on the theme page and the study page; nothing is written anywhere."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse
from PIL import Image

from data_access.models import Theme, ThemeImage, TuningStudy, TuningTrial
from tests.web.conftest import PASSWORD, SCREENSHOTS, chromium_path
from web import try_model

pytestmark = pytest.mark.django_db

THEME_NAME = "digits4"                  # tests/web/conftest.py: theme
CLASS_NAMES = ("0", "1", "2", "3")      # its folders, as the study would name the classes


def make_champion(folder: Path) -> str:
    """An MLflow store in `folder` whose `digits4_model@champion` is version 1: what a
    completed study leaves (tuning.study._register), minus the study. Returns its URI."""
    import torch

    from theme_classifier.network import build_network
    from tuning.data import PreprocessSettings
    from tuning.tracking import registry, retrying
    from tuning.tracking.model_package import description, log_classifier, preprocessing_of

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    example = folder / "example.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(example)
    settings = PreprocessSettings(image_size=16, channels=1, brightness=None, patch_size=None,
                                  patch_stride=None, split=(.6, .2, .2), seed=1,
                                  skip_unreadable=False)
    pre = preprocessing_of(settings, mean=[.3], std=[.3])
    torch.manual_seed(0)
    network = build_network("ResNet18", num_classes=len(CLASS_NAMES), in_channels=1)
    # A study run earlier in this process set MLflow's global tracking URI, which wins
    # over the environment: both point at this store while it is filled, then go back.
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with pytest.MonkeyPatch.context() as mp, _use_tracking_uri(uri):
        mp.setenv("MLFLOW_TRACKING_URI", uri)   # what the driver's open_study_runs sets
        client = retrying.client()
        run = client.create_run(client.create_experiment(THEME_NAME))
        model_uri = log_classifier(run.info.run_id, name="model",
                                   network_state=network.state_dict(),
                                   architecture="ResNet18", class_names=CLASS_NAMES,
                                   preprocessing=pre, example_image=str(example))
        registration = registry.register_best(
            client, model_uri=model_uri, model_name=registry.model_name(THEME_NAME), tags={},
            description=description(CLASS_NAMES, pre), metric="test_acc",
            direction="maximize", value=0.5)
    assert registration.champion_version == "1"
    return uri


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory) -> str:
    return make_champion(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(autouse=True)
def fresh_cache():
    try_model._models.clear()
    yield
    try_model._models.clear()


@pytest.fixture
def tryer(django_user_model):
    """A user who may try the champion model (and nothing else)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("tryer", password=PASSWORD)
    user.user_permissions.add(Permission.objects.get(codename="try_model"))
    return user


def store_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_rows() -> tuple[int, ...]:
    return tuple(m.objects.count() for m in (Theme, ThemeImage, TuningStudy, TuningTrial))


def png(path: Path) -> SimpleUploadedFile:
    return SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")


def result_rows(html: str) -> list[str]:
    return re.findall(r'<tr class="prediction[^"]*">(.*?)</tr>', html, re.S)


def label_of(row: str) -> str | None:
    found = re.search(r'<strong class="try-label">(.*?)</strong>', row)
    return found.group(1) if found else None


def test_the_theme_page_labels_uploads_with_the_champion(client, tryer, theme, make_study,
                                                          digits_dir, champion_store,
                                                          monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    make_study(theme)
    client.force_login(tryer)
    before = digest(store_path(champion_store)), db_rows()

    page = client.get(reverse("theme_detail", args=[theme.id])).content.decode()
    assert 'id="try-form"' in page and "models:/digits4_model@champion" in page

    url = reverse("theme_try_model", args=[theme.id])
    response = client.get(url)
    html = response.content.decode()
    assert response.status_code == 200
    assert '<span id="champion-version">1</span>' in html
    assert "models:/digits4_model@champion" in html and str(store_path(champion_store)) in html
    assert 'name="images"' in html and "multiple" in html
    assert try_model.cached_versions() == []                    # a GET loads nothing

    images = sorted(digits_dir.glob("*/*.png"))
    files = [png(images[0]), SimpleUploadedFile("notes.txt", b"not an image at all"),
             png(images[-1])]
    response = client.post(url, {"images": files})
    html = response.content.decode()
    assert response.status_code == 200, html
    rows = result_rows(html)
    assert len(rows) == 3
    assert images[0].name in rows[0] and "notes.txt" in rows[1] and images[-1].name in rows[2]
    for row in (rows[0], rows[2]):
        assert label_of(row) in CLASS_NAMES
        assert 'src="data:image/png;base64,' in row
        percents = [float(p) for p in re.findall(r"([\d.]+) %", row)]
        assert len(percents) == 1 + 3 and 0 < percents[0] <= 100   # label + top 3
        top = percents[1:]
        assert percents[0] == top[0] and top == sorted(top, reverse=True)
    assert label_of(rows[1]) is None and "not an image file" in rows[1]
    assert try_model.cached_versions() == [(champion_store, "digits4_model", "1")]

    # A second request uses the loaded model: loading again would fail here.
    import mlflow.pyfunc

    def no_reload(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", no_reload)
    response = client.post(url, {"images": [png(images[1])]})
    assert response.status_code == 200
    assert label_of(result_rows(response.content.decode())[0]) in CLASS_NAMES

    # Neither the MLflow store nor the database changed.
    assert (digest(store_path(champion_store)), db_rows()) == before


def test_the_study_page_uses_the_studys_own_store(client, tryer, theme, make_study,
                                                  champion_store, monkeypatch, settings,
                                                  digits_dir):
    """MLFLOW_TRACKING_URI unset: the store is the study's mlflow.tracking_uri, a
    relative SQLite path meaning the repository folder (where launches run)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings.BASE_DIR = store_path(champion_store).parent
    study_id = make_study(theme)
    TuningStudy.objects.filter(pk=study_id).update(resolved_config={
        "config": {"mlflow": {"tracking_uri": "sqlite:///mlflow.db"}}})
    client.force_login(tryer)

    page = client.get(reverse("study_detail", args=[study_id])).content.decode()
    url = reverse("study_try_model", args=[study_id])
    assert f'href="{url}"' in page

    response = client.post(url, {"images": [png(next(digits_dir.glob("2/*.png")))]})
    html = response.content.decode()
    assert '<span id="champion-version">1</span>' in html
    assert str(store_path(champion_store)) in html
    assert label_of(result_rows(html)[0]) in CLASS_NAMES


def test_no_champion_is_said_plainly(client, tryer, theme, make_study, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    client.force_login(tryer)
    missing = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")

    # No completed study: the theme page says so instead of showing the form.
    make_study(theme, finish=False)
    page = client.get(reverse("theme_detail", args=[theme.id])).content.decode()
    assert 'id="no-champion"' in page and 'id="try-form"' not in page

    # The try page: no store at all (and none is created), then a store without the model.
    url = reverse("theme_try_model", args=[theme.id])
    empty = tmp_path / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{empty}").search_experiments()
    for store in (missing, empty):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
        response = client.get(url)
        html = response.content.decode()
        assert response.status_code == 200
        assert 'id="no-champion"' in html and 'id="try-form"' not in html
        response = client.post(url, {"images": [SimpleUploadedFile("a.png", b"x")]})
        assert response.status_code == 200 and 'id="no-champion"' in response.content.decode()
    assert not missing.exists() and not missing.parent.exists()


def _local_folder(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_a_champion_runs_the_code_it_shipped_with(tmp_path, digits_dir, champion_store):
    """An old champion runs the theme_classifier copy inside it, not this checkout's,
    while another model and the checkout's own modules stay as they were."""
    import sys

    import theme_classifier.pyfunc
    from tuning.tracking import registry

    checkout_module = sys.modules["theme_classifier.pyfunc"]
    uri = make_champion(tmp_path)
    shipped = try_model.find_champion(tracking_uri=uri, theme_name=THEME_NAME)
    # The copy of theme_classifier that travels inside the logged model, made to label
    # every class with a marker.
    code = _local_folder(registry.champion(tracking_uri=uri, name=f"{THEME_NAME}_model")
                         .source) / "code" / "theme_classifier" / "pyfunc.py"
    text = code.read_text()
    original = 'self.class_names: list[str] = list(meta["class_names"])'
    assert original in text
    code.write_text(text.replace(original, 'self.class_names = ["shipped-" + n for n in '
                                           'meta["class_names"]]'))
    today = try_model.find_champion(tracking_uri=champion_store, theme_name=THEME_NAME)
    image = sorted(digits_dir.glob("*/*.png"))[0]

    def labels(champion) -> list[str]:
        upload = try_model.Upload(image.name, io.BytesIO(image.read_bytes()))
        prediction, unreadable = try_model.predict(
            champion, [upload, try_model.Upload("notes.txt", io.BytesIO(b"no image"))])
        assert unreadable.error == "not an image file"   # the model's own error class
        return [c.name for c in prediction.top]

    for _ in range(2):   # loaded once each, then from the cache: neither clobbers the other
        assert all(name.startswith("shipped-") for name in labels(shipped))
        assert set(labels(today)) <= set(CLASS_NAMES)
    assert sys.modules["theme_classifier.pyfunc"] is checkout_module is theme_classifier.pyfunc
    assert "shipped-" not in Path(checkout_module.__file__).read_text()


def test_the_shipped_code_binds_its_own_modules_at_import():
    """A model's code is loaded apart from the checkout's (tracking.model_loading) and
    then runs with the checkout's modules back in sys.modules: an import of
    theme_classifier inside a function would find the checkout's copy at predict time."""
    import ast

    import theme_classifier

    for path in Path(theme_classifier.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or "."] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n == "theme_classifier" or n.startswith("theme_classifier.")
                               or n.startswith(".") or getattr(node, "level", 0)
                               for n in names), (path.name, function.name, names)


def test_a_logged_model_pins_the_versions_it_was_trained_with(champion_store):
    from importlib.metadata import version

    from packaging.version import Version

    from tuning.tracking import registry

    found = registry.champion(tracking_uri=champion_store, name=f"{THEME_NAME}_model")
    lines = (_local_folder(found.source) / "requirements.txt").read_text().split()
    pinned = dict(line.split("==") for line in lines)
    for name in ("torch", "torchvision", "numpy", "pillow", "pandas", "mlflow"):
        assert pinned[name] == Version(version(name)).public, (name, lines)


def test_trying_needs_the_permission(client, viewer, theme, make_study, champion_store,
                                     monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    study_id = make_study(theme)
    client.force_login(viewer)
    for url in (reverse("theme_try_model", args=[theme.id]),
                reverse("study_try_model", args=[study_id])):
        assert client.get(url).status_code == 403
        assert client.post(url, {"images": [SimpleUploadedFile("a.png", b"x")]}
                           ).status_code == 403
    assert 'id="try-model"' not in client.get(reverse("theme_detail", args=[theme.id])
                                              ).content.decode()
    assert 'id="try-model"' not in client.get(reverse("study_detail", args=[study_id])
                                              ).content.decode()


def test_csrf_is_checked_on_uploads(tryer, theme, make_study, champion_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    make_study(theme)
    client = Client(enforce_csrf_checks=True)
    client.force_login(tryer)
    url = reverse("theme_try_model", args=[theme.id])
    assert client.post(url, {"images": [SimpleUploadedFile("a.png", b"x")]}).status_code == 403
    assert try_model.cached_versions() == []


def test_upload_limits_are_said_on_the_page(client, tryer, theme, make_study, digits_dir,
                                            champion_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    monkeypatch.setattr(try_model, "MAX_FILES", 3)
    monkeypatch.setattr(try_model, "MAX_FILE_BYTES", 64 * 1024)
    make_study(theme)
    client.force_login(tryer)
    url = reverse("theme_try_model", args=[theme.id])

    response = client.post(url, {})
    assert response.status_code == 200
    assert "Choose one or more image files." in response.content.decode()

    small = sorted(digits_dir.glob("*/*.png"))
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 300, 3), np.uint8)
                    ).save(big, format="PNG")
    assert len(big.getvalue()) > 64 * 1024
    files = [png(small[0]), SimpleUploadedFile("big.png", big.getvalue()), png(small[1]),
             png(small[2]), png(small[3])]
    response = client.post(url, {"images": files})
    html = response.content.decode()
    assert response.status_code == 200
    rows = result_rows(html)
    assert len(rows) == 3                         # the first three files only
    assert label_of(rows[0]) in CLASS_NAMES and label_of(rows[2]) in CLASS_NAMES
    assert "big.png" in rows[1] and "larger than 20 MB" in rows[1]
    assert 'id="try-warning"' in html and "At most 3 images at a time" in html


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_a_user_tries_the_model_in_the_browser(live_server, tryer, theme, make_study,
                                               digits_dir, champion_store, monkeypatch,
                                               tmp_path):
    executable = chromium_path()
    if executable is None:
        pytest.skip("/usr/bin/chromium is missing and `make browser` could not install it")
    from playwright.sync_api import sync_playwright

    from tests.web.test_web_browser import CHROMIUM_ARGS

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    make_study(theme)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    images = [next(digits_dir.glob(f"{c}/*.png")) for c in CLASS_NAMES]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live_server.url + reverse("login"))
        page.fill("#id_username", tryer.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login")
        page.wait_for_url("**/studies/")
        page.goto(live_server.url + reverse("theme_detail", args=[theme.id]))
        page.locator("#try-model").screenshot(path=str(SCREENSHOTS / "19-theme-try-model.png"))
        garbage = tmp_path / "notes.txt"
        garbage.write_text("not an image")
        page.set_input_files("#try-images", [str(p) for p in images] + [str(garbage)])
        page.click("#try-predict")
        page.wait_for_selector("#try-results")
        labels = page.locator("#try-results .try-label").all_text_contents()
        assert len(labels) == len(images) and set(labels) <= set(CLASS_NAMES)
        assert "not an image file" in page.text_content("#try-results tr.unreadable")
        assert page.text_content("#champion-version").strip() == "1"
        page.screenshot(path=str(SCREENSHOTS / "20-try-model.png"), full_page=True)

        # The same page in Japanese: the language switch comes back to the form.
        with page.expect_navigation():
            page.select_option("#language", "ja")
        page.set_input_files("#try-images", [str(p) for p in images[:2]])
        page.click("#try-predict")
        page.wait_for_selector("#try-results")
        assert "モデルを試す" in page.text_content("h1")
        page.screenshot(path=str(SCREENSHOTS / "21-try-model-ja.png"), full_page=True)
        assert errors == []
        browser.close()
