"""The study page shows the chosen model's held-out evaluation (confusion matrix,
per-class figures, misclassified test images) and links the learning curves, in English
and Japanese; a study without an evaluation says when the panels appear.

The studies are recorded as the driver records one, through DjangoStudyRecorder, with a
StudyEvaluation built from the theme's real image files; no Ray is needed.
"""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from data_access import selectors, services
from data_access.models import TuningStudy
from data_access.recorder import DjangoStudyRecorder
from tests.web.conftest import PASSWORD, SCREENSHOTS, chromium_path
from tests.web.test_web_browser import CHROMIUM_ARGS, wait_until_true
from tuning.tracking.recording import (
    StudyEnd,
    StudyEvaluation,
    StudyStart,
    TrialEnd,
    TrialResult,
    TrialStart,
)

# Per trial, its valid_acc at epochs 1, 2, 3; trial 1 is the best.
CURVES = ((0.3, 0.5, 0.55), (0.4, 0.7, 0.8), (0.35, 0.45, 0.6))
BEST = 1


def evaluation_of(theme_id: int, foreign_paths: list[str]) -> StudyEvaluation:
    """The shape the driver writes, from every 4th image of the theme: those whose index
    is a multiple of 3 are predicted as the next class. `foreign_paths` are misclassified
    rows that name no image of this theme."""
    spec = selectors.theme_get_spec(theme_id=theme_id)
    names = spec.class_names
    n = len(names)
    confusion = [[0] * n for _ in range(n)]
    wrong = []
    for index, sample in enumerate(spec.samples[::4]):
        predicted = (sample.label + 1) % n if index % 3 == 0 else sample.label
        confusion[sample.label][predicted] += 1
        if predicted != sample.label:
            wrong.append({"path": sample.path, "true": names[sample.label],
                          "predicted": names[predicted], "confidence": 0.61})
    per_class = []
    for i, name in enumerate(names):
        right, support = confusion[i][i], sum(confusion[i])
        called = sum(row[i] for row in confusion)
        precision, recall = right / called if called else 0.0, right / support
        per_class.append({"class": name, "precision": precision, "recall": recall,
                          "f1": 2 * precision * recall / (precision + recall or 1),
                          "support": support})
    wrong += [{"path": p, "true": names[0], "predicted": names[1], "confidence": 0.5}
              for p in foreign_paths]
    total = sum(map(sum, confusion))
    return StudyEvaluation(
        trial_number=BEST, split="test", class_names=names, confusion=confusion,
        per_class=per_class,
        metrics={"test_acc": sum(confusion[i][i] for i in range(n)) / total,
                 "test_macro_f1": sum(r["f1"] for r in per_class) / n},
        misclassified=wrong)


def record_study(theme, evaluation: StudyEvaluation | None) -> int:
    """A finished 3-trial, 3-epoch study selected on valid_acc, as the driver records it."""
    recorder = DjangoStudyRecorder()
    recorder.study_started(StudyStart(
        theme_id=theme.id, name="evidence", direction="maximize", metric="valid_acc",
        n_trials=len(CURVES), optuna_study_name="evidence", optuna_storage=None,
        mlflow_experiment_id="1", mlflow_parent_run_id="p1",
        resolved_config={"params": {"training": {"learning_rate": 0.001}}},
        param_space={"training.learning_rate": {"type": "float", "low": 0.0001,
                                                "high": 0.01, "log": True}}))
    for number, curve in enumerate(CURVES):
        params = {"training.learning_rate": 0.001 * (number + 1)}
        recorder.trial_started(TrialStart(number=number, ray_trial_id=f"t{number}",
                                          params=params, mlflow_run_id=f"run{number}"))
        for epoch, value in enumerate(curve, start=1):
            recorder.trial_result(TrialResult(number=number, epoch=epoch, node="node-a",
                                              metrics={"valid_acc": value}))
        recorder.trial_finished(TrialEnd(number=number, state="COMPLETE", value=curve[-1]))
    if evaluation is not None:
        recorder.study_evaluated(evaluation)
    recorder.study_finished(StudyEnd(
        status="completed", best_value=CURVES[BEST][-1], best_trial_number=BEST,
        best_params={"training.learning_rate": 0.001 * (BEST + 1)}))
    return recorder.study_id


@pytest.fixture
def evidence_study(theme, digits_dir, tmp_path):
    """A study with its evaluation; two misclassified rows are no image of its theme:
    one of another theme, one outside MEDIA_ROOT."""
    other = services.theme_import_folder(directory=digits_dir, name="other_digits")
    outside = tmp_path / "outside.png"
    outside.write_bytes((digits_dir / "0" / "0000.png").read_bytes())
    foreign = [selectors.theme_get_spec(theme_id=other.id).samples[0].path, str(outside)]
    evaluation = evaluation_of(theme.id, foreign)
    return record_study(theme, evaluation), evaluation, other


@pytest.fixture
def client_viewer(client, viewer):
    client.force_login(viewer)
    return client


def japanese(client) -> None:
    client.post(reverse("set_language"), {"language": "ja", "next": "/"})
    assert client.cookies["django_language"].value == "ja"


def test_the_study_page_shows_the_evaluation_in_both_languages(client_viewer, theme,
                                                              evidence_study):
    study_id, evaluation, other = evidence_study
    page = client_viewer.get(reverse("study_detail", args=[study_id])).content.decode()
    assert 'id="confusion-matrix"' in page and 'id="per-class"' in page
    assert "Held-out evaluation" in page and "Confusion matrix" in page
    # Every count of the matrix, in order, row by row; the diagonal is shaded green.
    table = page.split('id="confusion-matrix"')[1].split("</table>")[0]
    counts = [int(c) for c in re.findall(r'<td class="cm-[do]\d">(\d+)</td>', table)]
    assert counts == [c for row in evaluation.confusion for c in row]
    assert re.search(r'<td class="cm-d[45]">', table) and re.search(r'<td class="cm-o\d">', table)
    for row in evaluation.per_class:
        assert f"<td>{row['class']}</td>" in page
    assert f"{evaluation.metrics['test_acc']:.4f}" in page
    # Thumbnails only for the theme's own images; the other two rows are their file names.
    own = len(evaluation.misclassified) - 2
    links = re.findall(rf'<img src="/themes/{theme.id}/images/(\d+)/"', page)
    assert len(links) == own > 0
    assert f"/themes/{other.id}/images/" not in page
    assert page.count('class="nofile"') == 2 and "outside.png" in page
    for image_id in links:
        response = client_viewer.get(reverse("theme_image", args=[theme.id, image_id]))
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert reverse("study_plot", args=[study_id, "learning-curves"]) in page
    assert 'style="' not in page   # the CSP allows no inline style on this page

    japanese(client_viewer)
    page = client_viewer.get(reverse("study_detail", args=[study_id])).content.decode()
    assert 'lang="ja"' in page
    for text in ("テストでの評価", "混同行列", "クラス別", "誤分類されたテスト画像", "適合率",
                 "再現率", "学習曲線"):
        assert text in page, text
    for text in ("Held-out evaluation", "Confusion matrix", "Misclassified", "Precision"):
        assert text not in page, text


def test_the_learning_curves_plot(client_viewer, theme, evidence_study):
    study_id = evidence_study[0]
    page = client_viewer.get(reverse("study_plot", args=[study_id, "learning-curves"]))
    assert "web/vendor/plotly.min.js" in page.content.decode()
    data_url = reverse("study_plot_data", args=[study_id, "learning-curves"])
    figure = json.loads(client_viewer.get(data_url).content)["figure"]
    traces = {t["name"]: t for t in figure["data"]}
    assert set(traces) == {"Trial 0", "Trial 1 (best)", "Trial 2"}
    best = traces["Trial 1 (best)"]
    assert best["x"] == [1, 2, 3] and best["y"] == list(CURVES[BEST])
    assert best["line"]["width"] > traces["Trial 0"]["line"]["width"]
    assert figure["data"][-1]["name"] == "Trial 1 (best)"   # drawn over the others
    layout = figure["layout"]
    assert layout["title"]["text"] == "Learning curves"
    assert layout["xaxis"]["title"]["text"] == "Epoch"
    assert layout["yaxis"]["title"]["text"] == "valid_acc"

    japanese(client_viewer)
    figure = json.loads(client_viewer.get(data_url).content)["figure"]
    assert figure["layout"]["title"]["text"] == "学習曲線"
    assert figure["layout"]["xaxis"]["title"]["text"] == "エポック"
    assert {t["name"] for t in figure["data"]} == {"試行 0", "試行 1（最良）", "試行 2"}
    # Optuna's own plots get their title in the page's language too.
    history = json.loads(client_viewer.get(
        reverse("study_plot_data", args=[study_id, "history"])).content)["figure"]
    assert history["layout"]["title"]["text"] == "最適化履歴"


def test_a_study_without_evaluation_says_when_the_panels_appear(client_viewer, theme,
                                                                make_study):
    running = make_study(theme, values=(0.5,), finish=False)
    page = client_viewer.get(reverse("study_detail", args=[running])).content.decode()
    assert 'id="evidence-pending"' in page and "when the study has finished" in page
    assert 'id="confusion-matrix"' not in page
    # A test_ metric is reported once, at the end: its curve is the valid_ counterpart.
    data = json.loads(client_viewer.get(
        reverse("study_plot_data", args=[running, "learning-curves"])).content)
    assert data["active"] is True and data["figure"]["layout"]["yaxis"]["title"]["text"] == "valid_acc"

    ended = make_study(theme, name="old_run")
    page = client_viewer.get(reverse("study_detail", args=[ended])).content.decode()
    assert "No held-out evaluation was recorded" in page
    japanese(client_viewer)
    page = client_viewer.get(reverse("study_detail", args=[running])).content.decode()
    assert "試行が終わると" in page or "スタディが終わると" in page

    # A row in another shape (edited by hand, an older driver) still renders.
    TuningStudy.objects.filter(pk=ended).update(evaluation={"confusion": "?"})
    response = client_viewer.get(reverse("study_detail", args=[ended]))
    assert response.status_code == 200 and 'id="evidence-pending"' in response.content.decode()


def test_no_epoch_yet_no_learning_curves(client_viewer, theme):
    recorder = DjangoStudyRecorder()
    recorder.study_started(StudyStart(
        theme_id=theme.id, name="fresh", direction="maximize", metric="valid_acc",
        n_trials=1, optuna_study_name="fresh", optuna_storage=None,
        mlflow_experiment_id="1", mlflow_parent_run_id="p1", resolved_config={},
        param_space={}))
    data = json.loads(client_viewer.get(
        reverse("study_plot_data", args=[recorder.study_id, "learning-curves"])).content)
    assert "figure" not in data and "valid_acc" in data["message"]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_evidence_in_a_real_browser(live_server, viewer, theme, evidence_study,
                                        monkeypatch):
    """Both languages: the panels are visible, the thumbnails load, the learning curves
    are drawn, and the browser blocks nothing under the site's CSP."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("/usr/bin/chromium is missing and `make browser` could not install it")
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    study_id = evidence_study[0]
    url = live_server.url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        problems, images = [], []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        # Chromium reports each blocked inline script, style or load on the console.
        page.on("console", lambda m: "Content Security Policy" in m.text
                and problems.append(f"{page.url}: {m.text}"))
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: "/images/" in r.url and images.append(r.status))
        page.goto(url + "/login/")
        page.fill("#id_username", viewer.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login")
        page.wait_for_url(url + "/studies/")
        for language, title in (("en", "Learning curves"), ("ja", "学習曲線")):
            context.add_cookies([{"name": "django_language", "value": language, "url": url}])
            images.clear()
            page.goto(f"{url}/studies/{study_id}/")
            assert page.get_attribute("html", "lang") == language
            for panel in ("#confusion-matrix", "#per-class", "#misclassified"):
                assert page.locator(panel).is_visible(), panel
            wait_until_true(page, "[...document.querySelectorAll('#misclassified img')]"
                                  ".every(i => i.complete && i.naturalWidth > 0)")
            assert images and set(images) == {200}, images
            page.screenshot(path=str(SCREENSHOTS / f"evidence-{language}.png"), full_page=True)
            page.click("#learning-curves-link")
            page.wait_for_selector("#plot .plot-container .main-svg", timeout=30_000)
            assert page.locator("#plot .gtitle").text_content() == title
            assert page.locator("#plot .scatterlayer .trace").count() == len(CURVES)
            page.screenshot(path=str(SCREENSHOTS / f"learning-curves-{language}.png"))
        context.close()
        browser.close()
    assert problems == [], problems
