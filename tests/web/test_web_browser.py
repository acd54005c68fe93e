"""A user tunes a theme in a real browser: Debian's chromium driven by Playwright,
against a live server, with studies launched as real local background processes
(launch.py, a local Ray, MLflow in a SQLite file).

Slow (about two minutes): marked `browser` and `ray`. Screenshots of every page go to
test-output/screenshots/, to be looked at: a page that works but looks broken is a bug.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import yaml

from data_access import selectors
from data_access.models import TuningStudy
from tests.web.conftest import PASSWORD, SCREENSHOTS, chromium_path
from web.launch import local
from web.optuna_dashboard import _read_only_storage

pytestmark = [pytest.mark.browser, pytest.mark.ray, pytest.mark.django_db(transaction=True)]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
STUDY_TIMEOUT_MS = 180_000
PLOTS = ("history", "importance", "parallel", "slice")


@pytest.fixture
def browser_page(live_server, monkeypatch):
    executable = chromium_path()
    if executable is None:
        pytest.skip("/usr/bin/chromium is missing and `make browser` could not install it")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls made here
    # between browser steps are still plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900},
                                      accept_downloads=True, locale="en-US")
        page = context.new_page()
        page.js_errors = []
        page.csp_violations = []
        page.on("console", lambda m: m.type == "error" and page.js_errors.append(m.text))
        # Chromium reports each blocked inline script, style or load on the console.
        page.on("console", lambda m: "Content Security Policy" in m.text
                and page.csp_violations.append(f"{page.url}: {m.text}"))
        page.on("pageerror", lambda e: page.js_errors.append(str(e)))
        page.on("dialog", lambda dialog: dialog.accept())
        yield page
        context.close()
        browser.close()


@pytest.fixture
def launched(tmp_path, monkeypatch):
    """Real launches: launch.py, MLflow in this test's folder; every process is gone
    after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    for study in TuningStudy.objects.exclude(process_id=None):
        ref = local.ProcessRef(study.process_id, study.process_start)
        if local.is_running(ref):
            local.kill_group(ref, 9)


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def fill_study_form(page, *, n_trials: str, epochs: int | None = None) -> None:
    page.fill("#id_n_trials", n_trials)
    if epochs is not None:
        page.fill("#id_num_epochs", str(epochs))


def wait_status(page, wanted: str, timeout: float = STUDY_TIMEOUT_MS) -> None:
    """Wait for the study's status; an end other than the one wanted fails at once,
    with the study's error. (A study may finish before "running" is seen.)"""
    targets = {wanted, "completed", "failed", "killed"}
    page.wait_for_selector(", ".join(f'#study-status[data-status="{s}"]' for s in targets),
                           timeout=timeout)
    status = page.get_attribute("#study-status", "data-status")
    if status == wanted or (wanted == "running" and status == "completed"):
        return
    error = page.text_content("#study-error") if page.locator("#study-error").count() else ""
    pytest.fail(f"the study is {status}, not {wanted}: {error}")


def wait_until_true(page, expression: str, timeout_s: float = 30) -> None:
    """page.wait_for_function, which evals its predicate in the page: the site's CSP
    (no 'unsafe-eval') forbids that; page.evaluate goes through DevTools instead."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
        time.sleep(0.2)   # polling interval


def study_id_of(page) -> int:
    return int(page.url.rstrip("/").split("/")[-1])


def test_a_user_tunes_a_theme_in_the_browser(browser_page, live_server, tuner, theme, launched):
    page = browser_page
    url = live_server.url

    # Log in.
    page.goto(url + "/")
    assert "/login/" in page.url
    shot(page, "01-login")
    page.fill("#id_username", tuner.username)
    page.fill("#id_password", PASSWORD)
    page.click("#login")
    page.wait_for_url(url + "/studies/")
    shot(page, "02-studies-empty")

    # The theme: counts and thumbnails.
    page.click("nav.mainnav >> text=Themes")
    shot(page, "03-themes")
    page.click(f"text={theme.name}")
    page.wait_for_selector(".thumbs img")
    page.mouse.wheel(0, 5000)   # thumbnails load lazily, as they scroll into view
    wait_until_true(page, "[...document.querySelectorAll('.thumbs img')]"
                          ".every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator(".thumbs img").count() == 4 * 8
    shot(page, "04-theme")

    # New study: an error first, shown next to its field in the CLI's words.
    page.click("#tune-theme")
    page.wait_for_selector("#study-form")
    shot(page, "05-new-study")
    fill_study_form(page, n_trials="0")
    page.click("#launch")
    error = page.text_content("#field-n_trials .fielderror")
    assert "key 'study.n_trials': Input should be greater than or equal to 1" in error
    shot(page, "06-new-study-error")

    # Launch: 2 trials x 1 epoch of ResNet18 on 16 px grayscale digits.
    fill_study_form(page, n_trials="2")
    page.click("#launch")
    page.wait_for_selector("#live")
    first = study_id_of(page)
    wait_status(page, "running")
    shot(page, "07-study-running")
    wait_status(page, "completed")
    assert page.text_content("#progress-percent").strip() == "100 %"
    assert page.locator("#trial-table tbody tr").count() == 2
    shot(page, "08-study-completed")
    study = selectors.study_get(study_id=first)
    assert study.status == "completed" and study.launcher == "local"
    assert study.best_params and study.mlflow_parent_run_id
    # Launched without --storage, it has an Optuna journal of its own, which
    # optuna-dashboard reads with the metric named and the theme in the user attributes.
    record = TuningStudy.objects.get(pk=first)
    dashboard_view = optuna.load_study(study_name=record.optuna_study_name,
                                       storage=_read_only_storage(record.optuna_storage))
    assert dashboard_view.metric_names == [record.metric] and record.metric
    assert dashboard_view.user_attrs["theme_name"] == theme.name
    assert len(dashboard_view.trials) == 2

    # Each plot is drawn, without a JS error.
    for slug in PLOTS:
        page.click(f"#plot-link-{slug}" if slug == PLOTS[0] else f"nav.tabs a[href$='/plots/{slug}/']")
        page.wait_for_url(f"**/plots/{slug}/")
        page.wait_for_selector("#plot .plot-container .main-svg", timeout=30_000)
        shot(page, f"09-plot-{slug}")
        assert page.js_errors == [], (slug, page.js_errors)
    page.goto(f"{url}/studies/{first}/")

    # Apply the best params: download them as params.yaml, save them as the theme's defaults.
    with page.expect_download() as info:
        page.click("#download-params")
    params = yaml.safe_load(Path(info.value.path()).read_text())
    assert params["training"]["learning_rate"] == study.best_params["training.learning_rate"]
    page.click("#apply-best")
    page.wait_for_selector(".msg.success")
    shot(page, "10-best-applied")
    theme.refresh_from_db()
    assert theme.default_params["training"]["optimizer"] == study.best_params["training.optimizer"]
    page.goto(f"{url}/themes/{theme.id}/")
    assert "learning_rate" in page.text_content("#theme-defaults")

    # A second, longer study, cancelled while it runs: it ends killed.
    page.click("#tune-theme")
    assert "saved defaults" in page.text_content("#study-form")
    fill_study_form(page, n_trials="4", epochs=10)
    page.click("#launch")
    page.wait_for_selector("#live")
    second = study_id_of(page)
    # Cancel once a trial runs: the driver marks it killed, with the study.
    page.wait_for_selector("#trial-table .badge.running", timeout=STUDY_TIMEOUT_MS)
    page.click("#cancel-study")
    wait_status(page, "killed", timeout=90_000)
    shot(page, "11-study-killed")
    assert selectors.study_get(study_id=second).status == "killed"
    states = {t.state for t in selectors.trial_list(study_id=second)}
    assert "KILLED" in states and "RUNNING" not in states, states
    ref = TuningStudy.objects.get(pk=second)
    deadline = time.monotonic() + 30
    while local.is_running(local.ProcessRef(ref.process_id, ref.process_start)):
        assert time.monotonic() < deadline, "the cancelled study's process is still running"
        time.sleep(0.5)

    # Resume it: the same row and MLflow parent run, killed trials go on from their
    # checkpoints, and it runs to the end.
    page.goto(f"{url}/studies/{second}/")
    assert "launch.py --resume " in page.text_content("#resume-command")
    shot(page, "12-study-resumable")
    page.click("#resume-study")
    page.wait_for_selector(".msg.info")
    shot(page, "12-study-resumed")
    wait_status(page, "completed")
    resumed = selectors.study_get(study_id=second)
    assert resumed.mlflow_parent_run_id == ref.mlflow_parent_run_id
    trials = selectors.trial_list(study_id=second)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state for t in trials} == {"COMPLETE"}, [(t.number, t.state) for t in trials]
    assert page.locator("#resume-study").count() == 0     # nothing left to resume

    page.click("nav.mainnav >> text=Studies")
    shot(page, "13-studies")

    # The same pages in Japanese.
    with page.expect_navigation():
        page.select_option("#language", "ja")
    page.goto(f"{url}/studies/{first}/")
    assert "試行" in page.text_content("main")
    shot(page, "14-study-ja")
    assert page.js_errors == []
    assert page.csp_violations == [], page.csp_violations


def test_pages_and_admin_break_no_content_security_policy(browser_page, live_server,
                                                          django_user_model, theme,
                                                          make_study):
    """Every kind of page, the plots and Django's admin, under the site's CSP (which
    allows no inline script): the browser blocks nothing."""
    page = browser_page
    url = live_server.url
    root = django_user_model.objects.create_superuser("root", password=PASSWORD)
    study = make_study(theme)

    def visit(path: str):
        response = page.goto(url + path)
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("load")

    visit("/admin/login/")
    visit("/login/")
    page.fill("#id_username", root.username)
    page.fill("#id_password", PASSWORD)
    page.click("#login")
    page.wait_for_url(url + "/studies/")
    for path in (f"/studies/{study}/", "/themes/", f"/themes/{theme.id}/", "/studies/new/",
                 "/admin/", f"/admin/data_access/tuningstudy/{study}/change/",
                 f"/admin/data_access/theme/{theme.id}/change/"):
        visit(path)
        if path == f"/studies/{study}/":
            # The progress bar's width comes from app.js, not a style="" attribute.
            assert page.eval_on_selector("#progress .fill", "el => el.style.width") == "100%"
    for slug in PLOTS:
        visit(f"/studies/{study}/plots/{slug}/")
        page.wait_for_selector("#plot .plot-container .main-svg", timeout=30_000)
    assert page.csp_violations == [], page.csp_violations
