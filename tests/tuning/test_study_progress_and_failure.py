"""Two README promises about a running study, read from one study on a real local Ray:

- "While a study runs, a progress line is printed at least every 10 s and at every
  trial end";
- exit code 1 when no trial finished.

Its one trial works for SLEEP_S seconds without reporting (as one long epoch does), then
fails. The trial replaces train_trial through run_study(trainable=...), as
bench/overhead.py does; everything around it (Tune, the searcher, MLflow, the default
progress display) is the real thing.
"""

from __future__ import annotations

import io
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tuning.config import ConfigFiles, Overrides, load_study_config
from tuning.errors import Reported
from tuning.study import prepare_study, run_study

pytestmark = pytest.mark.ray

SLEEP_S = 24            # a trial this long without a report
MAX_GAP_S = 10 + 7      # "at least every 10 s", with slack for a loaded 2-core machine


class TimedLines(io.TextIOBase):
    """A stdout that keeps each line with the time it was written."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            self.lines.append((time.monotonic(), line))
        return len(text)


def slow_failing_trial(seconds: float):
    """A trial that works `seconds` without a report, then raises."""

    def trial(config, *, data, settings):
        import time

        time.sleep(seconds)
        raise RuntimeError("stand-in trial: it never finishes")

    return trial


@pytest.fixture(scope="module")
def failed_study(ray_local, tmp_path_factory, digits_theme):
    folder = tmp_path_factory.mktemp("no_trial_finishes")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    stdout = TimedLines()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        patch.chdir(folder)
        configs = tiny_config_files(
            folder / "configs", n_trials=1,
            infra={"mlflow": {"log_models": "none"},
                   "ray": {"storage_path": str(folder / "ray_results")},
                   "max_concurrent_trials": 1, "cache_dir": str(folder / "cache")})
        config = load_study_config(ConfigFiles.in_folder(configs),
                                   Overrides(theme_id=digits_theme.id))
        plan = prepare_study(config, digits_theme)
        patch.setattr(sys, "stdout", stdout)
        error = None
        try:
            run_study(plan, trainable=slow_failing_trial(SLEEP_S))   # the default display
        except Reported as raised:   # exit_code is what launch.py returns
            error = raised
    return {"error": error, "lines": stdout.lines, "client": MlflowClient(uri)}


def test_progress_line_at_least_every_10_s(failed_study):
    stamps = [t for t, line in failed_study["lines"] if line.startswith("[themetune] trials ")]
    assert len(stamps) >= 2, failed_study["lines"]
    gaps = [round(b - a, 1) for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= MAX_GAP_S, gaps


def test_progress_line_at_every_trial_end(failed_study):
    lines = [line for _, line in failed_study["lines"]]
    assert any(line.startswith("[themetune] trials 1/1 done") and "1 failed" in line
               for line in lines), lines


def test_no_trial_finished_ends_with_exit_code_1(failed_study):
    """launch.py returns a Reported error's exit_code (exit 1 itself, through
    launch.py, is also checked by the MLflow outage test in tests/reliability)."""
    error = failed_study["error"]
    assert error is not None, "the study did not fail"
    assert error.exit_code == 1
    message = error.one_line()
    assert "no trial finished (1 failed, 0 pruned, 0 killed)" in message
    assert "stand-in trial: it never finishes" in message
    client = failed_study["client"]
    (parent,) = [r for e in client.search_experiments()
                 for r in client.search_runs([e.experiment_id],
                                             filter_string="tags.`themetune.role` = 'parent'")]
    assert parent.info.status == "FAILED"
    assert "no trial finished" in parent.data.tags["themetune.end_reason"]
    (child,) = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert child.info.status == "FAILED"
    assert "RuntimeError: stand-in trial" in child.data.tags["themetune.end_reason"]


def test_timeout_before_any_trial_finished_ends_with_exit_code_1(ray_local, mlflow_uri,
                                                                 tmp_path, digits_theme):
    configs = tiny_config_files(
        tmp_path / "configs", n_trials=1, study={"timeout": 5},
        infra={"mlflow": {"log_models": "none"},
               "ray": {"storage_path": str(tmp_path / "ray_results")},
               "max_concurrent_trials": 1, "cache_dir": str(tmp_path / "cache")})
    config = load_study_config(ConfigFiles.in_folder(configs),
                               Overrides(theme_id=digits_theme.id))
    # The trial would work far longer than the timeout: it is stopped before any report.
    with pytest.raises(Reported) as stopped:
        run_study(prepare_study(config, digits_theme), trainable=slow_failing_trial(300))
    assert stopped.value.exit_code == 1, stopped.value.one_line()
    assert "no trial finished" in stopped.value.one_line()
