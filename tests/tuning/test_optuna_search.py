"""StudySearch on its own, without Ray: what it tells Optuna, and what optuna-dashboard
then shows. Tune's driver calls these hooks; here the test calls them in Tune's order."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import optuna
import optuna.distributions as od
import pytest
from optuna.trial import TrialState

from tuning import optuna_adapter
from tuning.config.params import REPORTED_METRICS, epoch_metric_for
from tuning.optuna_adapter import MLFLOW_RUN_ATTR, ORIGIN_ATTR, RAY_TRIAL_ATTR, StudySearch, open_storage

SPACE = {"training.learning_rate": od.FloatDistribution(1e-4, 1e-1, log=True)}


def searcher(metric: str = "test_acc", *, storage=None, study_name=None) -> StudySearch:
    mode = "min" if metric.endswith("_loss") else "max"
    kwargs = {"storage": storage, "study_name": study_name} if storage is not None else {}
    return StudySearch(space=SPACE, metric=metric, mode=mode,
                       sampler=optuna.samplers.TPESampler(seed=1), **kwargs)


def epoch(n: int, *, acc: float = 0.5, loss: float = 1.0) -> dict:
    return {"epoch": n, "training_iteration": n, "train_loss": loss, "train_acc": acc,
            "valid_loss": loss, "valid_acc": acc}


def final(n: int, *, acc: float = 0.5, test_acc: float = 0.7) -> dict:
    return {**epoch(n, acc=acc), "test_loss": 0.3, "test_acc": test_acc}


def optuna_trial(search: StudySearch, trial_id: str) -> optuna.trial.FrozenTrial:
    return search.study.trials[search.trial_number(trial_id)]


@pytest.mark.parametrize("metric, expected", [
    ("test_acc", "valid_acc"), ("valid_acc", "valid_acc"), ("train_acc", "valid_acc"),
    ("test_loss", "valid_loss"), ("valid_loss", "valid_loss"), ("train_loss", "valid_loss")])
def test_epoch_metric_is_the_validation_counterpart(metric, expected):
    assert epoch_metric_for(metric) == expected
    assert expected in REPORTED_METRICS


def test_each_epoch_reports_its_validation_metric_at_its_step():
    search = searcher("test_acc")
    search.suggest("t1")
    search.on_trial_result("t1", epoch(1, acc=0.4))
    search.on_trial_result("t1", epoch(2, acc=0.6))
    assert optuna_trial(search, "t1").intermediate_values == {1: 0.4, 2: 0.6}

    loss = searcher("test_loss")
    loss.suggest("t1")
    loss.on_trial_result("t1", epoch(1, acc=0.4, loss=2.5))
    assert optuna_trial(loss, "t1").intermediate_values == {1: 2.5}


def test_a_repeated_step_keeps_its_first_value_quietly():
    search = searcher()
    search.suggest("t1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns on a repeated step: none may reach here
        search.on_trial_result("t1", epoch(1, acc=0.4))
        search.on_trial_result("t1", epoch(2, acc=0.5))
        # A retried trial re-runs epoch 2 from its epoch-1 checkpoint.
        search.on_trial_result("t1", epoch(2, acc=0.55))
        search.on_trial_result("t1", epoch(3, acc=0.6))
    assert optuna_trial(search, "t1").intermediate_values == {1: 0.4, 2: 0.5, 3: 0.6}


def test_non_finite_values_and_results_without_the_metric_are_skipped():
    search = searcher()
    search.suggest("t1")
    search.on_trial_result("t1", epoch(1, acc=math.nan))
    search.on_trial_result("t1", epoch(2, acc=math.inf))
    search.on_trial_result("t1", {"epoch": 3, "train_loss": 1.0})
    search.on_trial_result("t1", epoch(4, acc=0.5))
    assert optuna_trial(search, "t1").intermediate_values == {4: 0.5}
    # A step skipped for its value is not taken: a retry that reports it may still fill it.
    search.on_trial_result("t1", epoch(1, acc=0.3))
    assert optuna_trial(search, "t1").intermediate_values == {1: 0.3, 4: 0.5}


def test_user_attrs_link_each_trial_to_ray_mlflow_and_the_parent_run():
    search = searcher()
    search.origin = "parent-run"
    search.suggest("t1")
    search.tag_trial("t1", {MLFLOW_RUN_ATTR: "child-run"})
    search.tag_trial("unknown", {MLFLOW_RUN_ATTR: "ignored"})  # no Optuna trial: nothing
    assert optuna_trial(search, "t1").user_attrs == {
        RAY_TRIAL_ATTR: "t1", ORIGIN_ATTR: "parent-run", MLFLOW_RUN_ATTR: "child-run"}

    # Without a parent run (a searcher driven alone), the Ray id is still there.
    alone = searcher()
    alone.suggest("t9")
    assert optuna_trial(alone, "t9").user_attrs == {RAY_TRIAL_ATTR: "t9"}


def test_complete_with_a_final_result_tells_the_study_metric():
    search = searcher()
    search.suggest("t1")
    search.on_trial_result("t1", epoch(1, acc=0.4))
    search.on_trial_result("t1", final(2, acc=0.6, test_acc=0.7))
    search.on_trial_complete("t1", final(2, acc=0.6, test_acc=0.7))
    trial = optuna_trial(search, "t1")
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.7)
    assert trial.intermediate_values == {1: 0.4, 2: 0.6}


def test_stopped_early_without_test_metrics_is_pruned():
    search = searcher()
    search.suggest("t1")
    search.on_trial_result("t1", epoch(1, acc=0.4))
    search.on_trial_complete("t1", epoch(1, acc=0.4))
    trial = optuna_trial(search, "t1")
    # Optuna's rule for a pruned trial: its value is its last intermediate value, the
    # validation metric at the epoch the scheduler stopped it, never a test metric.
    assert (trial.state, trial.value) == (TrialState.PRUNED, 0.4)
    assert trial.intermediate_values == {1: 0.4}

    never_reported = searcher()
    never_reported.suggest("t1")
    never_reported.on_trial_complete("t1", {"epoch": 1})
    trial = optuna_trial(never_reported, "t1")
    assert (trial.state, trial.value) == (TrialState.PRUNED, None)


@pytest.mark.parametrize("outcome", [
    {"result": final(2), "error": True},
    {"result": None, "error": True},
    {"result": final(2, test_acc=math.nan), "error": False},
])
def test_an_error_or_a_nan_study_metric_fails(outcome):
    search = searcher()
    search.suggest("t1")
    search.on_trial_complete("t1", outcome["result"], error=outcome["error"])
    trial = optuna_trial(search, "t1")
    assert (trial.state, trial.value) == (TrialState.FAIL, None)


@pytest.mark.parametrize("decided, expected", [
    (("COMPLETE", 0.9), (TrialState.COMPLETE, 0.9)),
    (("PRUNED", 0.9), (TrialState.PRUNED, None)),
    (("FAIL", None), (TrialState.FAIL, None)),
])
def test_a_decided_outcome_wins_over_the_rerun(decided, expected):
    search = searcher()
    search.suggest("t1")
    search.decide("t1", *decided)
    # The resumed trial re-runs its last epoch to another end than the one recorded.
    search.on_trial_complete("t1", final(2, test_acc=0.1), error=decided[0] == "COMPLETE")
    trial = optuna_trial(search, "t1")
    assert (trial.state, trial.value) == expected
    assert "t1" not in search.decided


def test_a_second_completion_and_later_results_change_nothing():
    search = searcher()
    search.suggest("t1")
    search.on_trial_complete("t1", final(2, test_acc=0.7))
    search.on_trial_complete("t1", None, error=True)
    search.on_trial_result("t1", epoch(3, acc=0.9))
    search.tag_trial("t1", {MLFLOW_RUN_ATTR: "late"})
    trial = optuna_trial(search, "t1")
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.7)
    assert trial.intermediate_values == {}
    assert MLFLOW_RUN_ATTR not in trial.user_attrs


def test_a_trial_told_after_the_restored_snapshot_takes_no_more_writes(tmp_path):
    """A resumed driver's searcher can think a trial open that the storage has closed."""
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = searcher(storage=storage, study_name="s")
    search.suggest("t1")
    search.on_trial_result("t1", epoch(1, acc=0.4))
    snapshot = tmp_path / "searcher.pkl"
    search.save(str(snapshot))
    search.on_trial_complete("t1", final(2, test_acc=0.7))  # after the snapshot

    resumed = searcher(storage=storage, study_name="s")
    resumed.restore(str(snapshot))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.on_trial_result("t1", epoch(1, acc=0.1))  # kept from the snapshot: skipped
        resumed.on_trial_result("t1", final(2, acc=0.6))  # refused by the storage: ignored
        resumed.tag_trial("t1", {MLFLOW_RUN_ATTR: "late"})
    trial = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.7)
    assert trial.intermediate_values == {1: 0.4}


# -- optuna-dashboard, served for real over a storage StudySearch wrote ------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, *, deadline: float) -> dict:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _write_study(url: str) -> int:
    storage = open_storage(url)
    search = searcher(storage=storage, study_name="dash")
    search.describe_study({"theme_name": "digits"})
    search.suggest("t1")
    search.tag_trial("t1", {MLFLOW_RUN_ATTR: "child-run"})
    search.on_trial_result("t1", epoch(1, acc=0.4))
    search.on_trial_result("t1", final(2, acc=0.6, test_acc=0.7))
    search.on_trial_complete("t1", final(2, acc=0.6, test_acc=0.7))
    # The id in optuna-dashboard's URLs, as the web UI finds it.
    return storage.get_study_id_from_name("dash")


@pytest.mark.slow
def test_optuna_dashboard_shows_intermediate_values_and_links(tmp_path):
    pytest.importorskip("optuna_dashboard")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study_id = _write_study(url)
    port = _free_port()
    # The command the README gives, from this venv.
    command = [str(Path(sys.executable).with_name("optuna-dashboard")), url,
               "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    log = tmp_path / "dashboard.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{study_id}",
                               deadline=time.monotonic() + 20)
        except OSError as exc:
            raise AssertionError(f"optuna-dashboard did not answer: {log.read_text()}") from exc
        finally:
            server.terminate()
            server.wait(timeout=10)
    assert detail["has_intermediate_values"] is True
    # The objective by its metric's name, not "Objective 0"; what the study is about.
    assert detail["objective_names"] == ["test_acc"]
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert study_attrs["theme_name"] == "digits"
    assert study_attrs["intermediate_values"] == "valid_acc after each epoch (step = epoch)"
    [trial] = detail["trials"]
    assert trial["intermediate_values"] == [{"step": 1, "value": 0.4}, {"step": 2, "value": 0.6}]
    attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
    assert attrs[MLFLOW_RUN_ATTR] == "child-run" and attrs[RAY_TRIAL_ATTR] == "t1"


def test_a_trial_asked_but_never_tagged_before_the_crash_is_closed(tmp_path, monkeypatch):
    """The driver died between Optuna's ask and the tags (seen once in the suite): a
    resume closes the trial as FAIL once it is older than any live driver's tagging,
    and leaves another driver's trials of a shared study alone."""
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    search = searcher(storage=storage, study_name="s")
    search.origin = "parent-run"
    search.suggest("t1")
    snapshot = tmp_path / "searcher.pkl"
    search.save(str(snapshot))
    shared = optuna.load_study(study_name="s", storage=storage)
    untagged = shared.ask()                                   # killed before the tags
    elsewhere = shared.ask()
    elsewhere.set_user_attr(ORIGIN_ATTR, "another-parent-run")
    elsewhere.set_user_attr(RAY_TRIAL_ATTR, "x1")             # another live driver's

    def states():
        return {t.number: t.state for t in optuna.load_study(study_name="s",
                                                             storage=storage).trials}

    resumed = searcher(storage=storage, study_name="s")
    resumed.restore(str(snapshot))   # just asked: it may be a live driver's, not yet tagged
    assert states()[untagged.number] == TrialState.RUNNING
    monkeypatch.setattr(optuna_adapter, "UNTAGGED_AFTER_S", 0)
    again = searcher(storage=storage, study_name="s")
    again.restore(str(snapshot))
    assert states()[untagged.number] == TrialState.FAIL
    assert states()[elsewhere.number] == TrialState.RUNNING
    assert states()[0] == TrialState.RUNNING            # the snapshot's own, still open
