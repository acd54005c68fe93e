"""README promises about launch.py, checked end to end: launch.py as a user runs it
(a real Django DB file, real MLflow stores, real Ray: each launch joins the test
session's local cluster through `ray.address`, as a launch joins any running cluster).

One scenario serves every test here; it runs once per module and is only read after:

1. Launch A (1000 trials, one at a time) logs to a real `mlflow server` and keeps its
   Optuna study in a journal file.
2. Once A has finished a trial, launch B joins the same journal study with
   `--timeout`: 200 trials cannot finish, the timeout ends B. B's theme has a file that
   turned unreadable (`data.skip_unreadable: true`), its trials start from a
   `model.weights` file with a frozen backbone, and it logs every model (`log_models:
   all`) to a SQLite MLflow store.
3. Once B has ended and A has finished a trial it asked after B's end, A's MLflow
   server goes away; while A waits for it, A gets SIGINT, then a second SIGINT.
4. A is left unfinished, for the `--resume` tests (which stop before anything starts).

No step is timed by a sleep: each waits for a line launch.py prints or a process exit,
with generous timeouts.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
import torchvision
import yaml
from mlflow.tracking import MlflowClient

import launch
from tests.conftest import make_site, tiny_config_files
from tests.reliability.reliability_helpers import trials_done
from tests.reliability.test_reliability_mlflow_outage import MlflowServer
from tuning.recovery.resume import RESUME_FILE

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.ray

TRIALS_A = 1000      # A never ends by itself
# B's --timeout, in seconds: room for a first trial on a loaded machine. 35 s was too
# little in CI on 2026-12-03 (three test workers on 2 cores: A's first trial took about
# 100 s from launch, and B's first trial had not finished when its 35 s ran out).
TIMEOUT_B = 90
A_EPOCHS, B_EPOCHS = 8, 3   # epochs per trial: fewer, slower trials (the scenario's disk)
TRIALS_B = 200       # more than TIMEOUT_B seconds can run: the timeout ends B
OUTAGE_BUDGET_S = 25   # A's THEMETUNE_MLFLOW_OUTAGE_S
# A second signal "stops at once": with the driver waiting for MLflow, well before the
# outage budget runs out.
AT_ONCE_S = 15


# --------------------------------------------------------------------------- helpers

class Launch:
    """launch.py in the background. A thread reads its output (stderr joined to stdout)
    as it comes, with the time of each line, so that the test can wait for a line while
    the pipe keeps draining."""

    def __init__(self, env, cwd, *args):
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *map(str, args)],
                                     env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.ended_at: float | None = None
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float, *, after: int = 0) -> tuple[int, float, str]:
        """The first line (from index `after`) that satisfies predicate: index, time, text."""
        deadline = time.monotonic() + timeout
        index = after
        with self._cond:
            while True:
                while index < len(self.lines):
                    stamp, line = self.lines[index]
                    if predicate(line):
                        return index, stamp, line
                    index += 1
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise AssertionError(
                        f"launch.py {'ended' if self._eof else 'never printed'} before the "
                        f"awaited line:\n{self.output[-5000:]}")
                self._cond.wait(remaining)

    def wait(self, timeout: float) -> int:
        self.proc.wait(timeout=timeout)
        self.ended_at = time.monotonic()
        self._reader.join(timeout=60)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(line for _, line in self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


def children(client: MlflowClient, parent_id: str):
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parent_of(output: str) -> str:
    match = re.search(r"parent run ([0-9a-f]{32})", output)
    assert match, output[-3000:]
    return match.group(1)


@pytest.fixture(scope="module")
def site(tmp_path_factory, digits_folder):
    """A theme of 96 digits, one of whose files turned unreadable after the import."""
    site = make_site(tmp_path_factory.mktemp("site"), digits_folder, theme_name="promise_digits")
    broken = sorted((site["folder"] / "media").rglob("*.png"))[0]
    broken.write_bytes(b"\x89PNG truncated")
    site["broken"] = broken
    site["client"] = MlflowClient(site["env"]["MLFLOW_TRACKING_URI"])
    return site


def base_params(epochs: int, **model) -> dict:
    return {"model": {"name": "ResNet18", **model},
            "training": {"num_epochs": epochs, "run_name": "base_run", "batch_size": 16},
            "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3}}


@pytest.fixture(autouse=True)
def _site_store(site, monkeypatch):
    """mlflow's module functions (search_logged_models, pyfunc.load_model) read the store
    from the environment, as launch.py's children do."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", site["env"]["MLFLOW_TRACKING_URI"])


SKIPPING = {"training": {"run_name": "promises"},
            "data": {"image_size": 64, "channels": 1, "skip_unreadable": True}}


# -------------------------------------------------------------------- the scenario

def weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A ResNet18 state_dict for 3-channel input and 10 classes (so conv1 and fc do not
    fit a 1-channel, 4-class theme), with running statistics no fresh model has."""
    generator = torch.Generator().manual_seed(1234)
    state = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = 0.01 * torch.randn(value.shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = 1 + 0.1 * torch.rand(value.shape, generator=generator)
    torch.save(state, path)
    return state


def infra(folder: Path, address: str, **changes) -> dict:
    """config.yaml of a launch that joins the test session's Ray cluster (ray.address),
    as a launch joins any running cluster: no Ray start per launch."""
    return {"mlflow": {"log_models": "all"},
            "ray": {"address": address, "storage_path": str(folder / "ray_results")},
            "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2,
            "cache_dir": str(folder.parent / "cache"), **changes}


@pytest.fixture(scope="module")
def scenario(site, ray_local_join, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenario")
    address, join_env = ray_local_join["address"], {**site["env"], **ray_local_join["env"]}
    journal = folder / "study.log"
    server = MlflowServer(Path(tmp_path_factory.mktemp("mlflow_server")))
    # The scenario's disk: a study keeps its trials' checkpoints until it ends (A never
    # does), and on a quiet machine a one-epoch trial at 16 px took under a second, so
    # A and B ran about 100 trials each in B's 90 s (11 GB). Light checkpoints (SGD
    # without momentum: 45 MB, not Adam's 134), 64 px and several epochs a trial keep
    # the count down without a sleep.
    configs_a = tiny_config_files(
        folder / "configs_a", base=base_params(A_EPOCHS), params=SKIPPING,
        infra=infra(folder / "configs_a", address, mlflow={"log_models": "none"},
                    max_concurrent_trials=1),
        light_checkpoints=True)
    weights = weights_file(folder / "start.pt")
    configs_b = tiny_config_files(   # same search space; B's base params are its own
        folder / "configs_b", base=base_params(B_EPOCHS, weights=str(folder / "start.pt"),
                                               freeze_backbone=True),
        params=SKIPPING, infra=infra(folder / "configs_b", address), light_checkpoints=True)
    shared = ["--theme-id", site["theme_id"], "--storage", f"journal:{journal}",
              "--study-name", "shared"]
    a = b = None
    try:
        server.start()
        env_a = {**join_env, "MLFLOW_TRACKING_URI": server.uri,
                 "THEMETUNE_MLFLOW_OUTAGE_S": str(OUTAGE_BUDGET_S)}
        a = Launch(env_a, folder, *shared, "--configs", configs_a, "--n-trials", TRIALS_A)
        a.wait_for(lambda line: (trials_done(line) or 0) >= 1, timeout=400)

        b = Launch(join_env, folder, *shared, "--configs", configs_b,
                   "--n-trials", TRIALS_B, "--timeout", TIMEOUT_B)
        _, b_tune_started, _ = b.wait_for(lambda line: "continue with: " in line, timeout=400)
        b.wait(timeout=600)

        seen = len(a.lines)
        done_at_b_end = max([trials_done(line) or 0 for _, line in a.lines[:seen]])
        # The trial A ran when B ended, then one A asked after B's end.
        a.wait_for(lambda line: (trials_done(line) or 0) >= done_at_b_end + 2, timeout=300,
                   after=seen)

        seen = len(a.lines)
        server.stop()
        a.wait_for(lambda line: "MLflow tracking server unreachable" in line, timeout=300, after=seen)
        a.proc.send_signal(signal.SIGINT)
        a.wait_for(lambda line: "SIGINT received" in line, timeout=120, after=seen)
        second = time.monotonic()
        a.proc.send_signal(signal.SIGINT)
        a.wait(timeout=OUTAGE_BUDGET_S * 4 + 300)
    finally:
        for launched in (a, b):
            if launched is not None:
                launched.close()
        server.stop()
    assert b.proc.returncode == 0, b.output[-5000:]
    return {"a": a, "b": b, "journal": journal, "configs_a": configs_a,
            "configs_b": configs_b, "weights": weights, "a_mlflow": server.uri,
            "a_parent": parent_of(a.output), "b_parent": parent_of(b.output),
            "b_tune_seconds": b.ended_at - b_tune_started,
            "second_signal_to_exit_s": a.ended_at - second}


def finished_children(site, scenario):
    runs = children(site["client"], scenario["b_parent"])
    return [c for c in runs if c.info.status == "FINISHED"]


def logged_models(site, runs) -> dict:
    # The site's own store: mlflow's global tracking URI belongs to whichever test set it.
    mlflow.set_tracking_uri(site["env"]["MLFLOW_TRACKING_URI"])
    return {m.source_run_id: m for m in mlflow.search_logged_models(
        experiment_ids=[runs[0].info.experiment_id], output_format="list")}


# ------------------------------------------------------------------ launch B's promises

def test_timeout_ends_the_study_within_its_budget(site, scenario):
    """--timeout S: seconds of wall time for the whole study; what finished counts."""
    client = site["client"]
    parent = client.get_run(scenario["b_parent"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["timeout"] == str(float(TIMEOUT_B))
    assert parent.data.params["n_trials"] == str(TRIALS_B)
    runs = children(client, scenario["b_parent"])
    assert any(c.info.status == "FINISHED" for c in runs), "no trial finished in time"
    assert len(runs) < TRIALS_B, "the study ran every trial: the timeout did nothing"
    # Trials cut off by the budget end as a stopped study's do, never left RUNNING.
    assert {c.info.status for c in runs} <= {"FINISHED", "KILLED"}
    # Tune's start to the driver's exit: the budget, plus registering the best model and
    # shutting Ray down (generous for a loaded 2-core machine). 200 trials would need
    # several minutes.
    assert scenario["b_tune_seconds"] < TIMEOUT_B + 120, scenario["b_tune_seconds"]
    last = [line for line in scenario["b"].output.splitlines() if trials_done(line) is not None][-1]
    assert trials_done(last) < TRIALS_B


def test_each_child_run_has_its_model_and_trial_config(site, scenario):
    """log_models: all -> every finished trial's child run holds its pyfunc model and
    trial_config.yaml (the trial's own parameters)."""
    runs = finished_children(site, scenario)
    models = logged_models(site, runs)
    for child in runs:
        assert child.info.run_id in models, f"{child.info.run_name} has no model"
        path = mlflow.artifacts.download_artifacts(
            run_id=child.info.run_id, artifact_path="trial_config.yaml",
            tracking_uri=site["env"]["MLFLOW_TRACKING_URI"])
        trial_config = yaml.safe_load(Path(path).read_text())
        assert trial_config["training"]["learning_rate"] == pytest.approx(
            float(child.data.params["training.learning_rate"]))
        assert trial_config["training"]["optimizer"] == "SGD"   # light_checkpoints' base
        assert trial_config["model"]["freeze_backbone"] is True


def test_model_weights_start_every_trial_and_misfit_layers_are_skipped(site, scenario):
    """model.weights: each trial starts from the file; conv1 (3 channels in the file, 1 in
    the theme) and fc (10 classes vs 4) are skipped. freeze_backbone keeps the rest as
    loaded, so each child's model must carry the file's backbone exactly."""
    weights = scenario["weights"]
    runs = finished_children(site, scenario)
    models = logged_models(site, runs)
    backbone = [k for k in weights if not k.startswith(("conv1.", "fc."))]
    assert backbone
    for child in runs[:3]:   # loading a model takes a second or two: three suffice
        network = mlflow.pyfunc.load_model(
            models[child.info.run_id].model_uri).unwrap_python_model().network
        state = network.state_dict()
        assert state["conv1.weight"].shape == (64, 1, 7, 7)
        assert state["fc.weight"].shape == (4, 512)
        for key in backbone:
            assert torch.equal(state[key].cpu(), weights[key]), (child.info.run_name, key)


def test_children_are_tagged_with_the_node_ip(site, scenario):
    import ray.util

    here = ray.util.get_node_ip_address()
    for child in finished_children(site, scenario):
        ip = child.data.tags.get("ray.node_ip", "")
        ipaddress.ip_address(ip)   # raises on anything but an address
        assert ip == here, (child.info.run_name, ip, here)   # a one-node cluster: this one
        assert len(child.data.tags["ray.node_id"]) >= 16


def test_unreadable_file_is_skipped_and_counted_on_the_parent_run(site, scenario):
    parent = site["client"].get_run(scenario["b_parent"])
    assert parent.data.params["skipped_unreadable"] == "1"
    split = sum(int(parent.data.params[k]) for k in ("n_train", "n_valid", "n_test"))
    assert split == 4 * 24 - 1


# ------------------------------------------------------ A and B: one study, one time

def test_two_launches_share_one_study_at_the_same_time(site, scenario):
    from tuning.optuna_adapter import open_storage

    study = optuna.load_study(study_name="shared",
                              storage=open_storage(f"journal:{scenario['journal']}"))
    origin = {t.number: t.user_attrs.get("themetune.parent_run_id") for t in study.trials}
    numbers_a = sorted(n for n, p in origin.items() if p == scenario["a_parent"])
    numbers_b = sorted(n for n, p in origin.items() if p == scenario["b_parent"])
    # Each trial of the one study comes from one of the two launches.
    assert numbers_a and numbers_b
    assert len(numbers_a) + len(numbers_b) == len(study.trials)
    # At the same time: A asked trials before B started and after B ended.
    assert numbers_a[0] < numbers_b[0] and numbers_b[-1] < numbers_a[-1], (numbers_a, numbers_b)
    # B's child runs carry the numbers of the shared study, and their values.
    by_number = {t.number: t for t in study.trials}
    runs_b = children(site["client"], scenario["b_parent"])
    # (B's searcher may have asked one more trial that the timeout kept from starting.)
    started_b = sorted(int(c.data.tags["optuna.trial_number"]) for c in runs_b)
    assert started_b and set(started_b) <= set(numbers_b), (started_b, numbers_b)
    assert len(set(started_b)) == len(started_b)
    for child in runs_b:
        trial = by_number[int(child.data.tags["optuna.trial_number"])]
        assert child.info.run_name == f"trial_{trial.number}"
        assert trial.user_attrs["mlflow.run_id"] == child.info.run_id
        if child.info.status == "FINISHED":
            assert trial.state.name == "COMPLETE"
            assert trial.value == pytest.approx(child.data.metrics["test_acc"])
    assert site["client"].get_run(scenario["b_parent"]).data.params["storage"] == \
        f"journal:{scenario['journal']}"


def test_second_signal_stops_at_once(scenario):
    a = scenario["a"]
    output = a.output
    assert "send it again to stop at once" in output
    assert a.proc.returncode == 130, output[-5000:]
    assert scenario["second_signal_to_exit_s"] < AT_ONCE_S, scenario["second_signal_to_exit_s"]


# --------------------------------------------------------------------- --resume

def resume_of(experiment: Path) -> dict:
    return json.loads((experiment / RESUME_FILE).read_text())


def a_experiment(scenario) -> Path:
    match = re.search(r"continue with: python launch.py --resume (\S+)", scenario["a"].output)
    assert match, scenario["a"].output[-3000:]
    return Path(match.group(1))


def refused(argv, capsys) -> str:
    """launch.py's main with argv: exit 2 and one error line, which is returned."""
    capsys.readouterr()
    code = launch.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_resume_without_a_folder_takes_the_newest_unfinished_and_refuses_changes(
        scenario, capsys, monkeypatch):
    """`--resume` alone: the newest unfinished experiment under ray.storage_path (A's;
    an older unfinished one is planted beside it). Asking it to run with another
    --n-trials is refused before anything starts (exit 2, one line)."""
    experiment = a_experiment(scenario)
    assert not resume_of(experiment)["finished"]
    older = experiment.parent / "shared-19990101-000000"
    older.mkdir()
    stale = resume_of(experiment)
    stale["overrides"]["n_trials"] = 999
    (older / RESUME_FILE).write_text(json.dumps(stale))
    os.utime(older / RESUME_FILE, (time.time() - 86400, time.time() - 86400))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", scenario["a_mlflow"])

    line = refused(["--resume", "--configs", str(scenario["configs_a"]), "--n-trials", "5"],
                   capsys)
    # A's 1000, not the older experiment's 999.
    assert f"--n-trials 5 differs from the study's {TRIALS_A}" in line, line
    assert "Fix:" in line
    assert resume_of(experiment)["resumes"] == 0   # nothing was resumed


@pytest.mark.parametrize("change", ["storage", "theme", "tracking_uri"])
def test_resume_with_changed_values_is_refused(site, scenario, tmp_path, capsys, monkeypatch,
                                               change):
    experiment = a_experiment(scenario)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", scenario["a_mlflow"])
    argv = ["--resume", str(experiment)]
    if change == "storage":
        argv += ["--storage", f"sqlite:///{tmp_path / 'other.db'}"]
    elif change == "theme":
        argv += ["--theme-id", str(site["theme_id"] + 1)]
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    line = refused(argv, capsys)
    flag = {"storage": "--storage", "theme": "--theme-id",
            "tracking_uri": "MLFLOW_TRACKING_URI"}[change]
    assert f"key '{flag}'" in line and "Fix:" in line, line
    assert not (tmp_path / "other.db").exists()
    assert resume_of(experiment)["resumes"] == 0


def test_resume_without_a_folder_when_nothing_is_unfinished(scenario, capsys):
    # B's storage path holds B's experiment alone, and B finished.
    line = refused(["--resume", "--configs", str(scenario["configs_b"])], capsys)
    assert "no unfinished experiment" in line and "key '--resume'" in line, line
