"""README promises about launch.py, checked end to end: launch.py as a user runs it
(a real Django DB file, a real MLflow store, a real local Ray), one subprocess per study.

Two studies serve every test here, each run once per module and only read afterwards:

- `timed_study`: `--timeout` on a study of 200 trials that cannot all finish; its theme
  has an unreadable file (`data.skip_unreadable: true`) and its trials start from a
  `model.weights` file with a frozen backbone, under `log_models: all`.
- `shared_studies`: two launches sharing one journal-file Optuna study at the same time;
  the first is stopped with two SIGINTs and left unfinished, for `--resume`.

No fault is timed by a sleep: each step waits for a line launch.py prints (or a process
exit), with generous timeouts.
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

from tests.conftest import make_site, tiny_config_files

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import launch  # noqa: E402
from tuning.resume import RESUME_FILE  # noqa: E402

pytestmark = pytest.mark.ray

TIMEOUT_S = 30          # --timeout of the timed study
TIMED_TRIALS = 200      # more than 30 s can run: the timeout ends the study
SHARED_TRIALS_A = 1000  # the first shared launch never ends by itself: it is stopped
SHARED_TRIALS_B = 2


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


def trials_done(line: str) -> int | None:
    match = re.search(r"\[themetune\] trials (\d+)/\d+ done", line)
    return int(match.group(1)) if match else None


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


def base_params(**model) -> dict:
    return {"model": {"name": "ResNet18", **model},
            "training": {"num_epochs": 1, "run_name": "base_run", "batch_size": 16},
            "data": {"split_ratio": {"train": 0.6, "valid": 0.2, "test": 0.2}, "seed": 3}}


@pytest.fixture(autouse=True)
def _site_store(site, monkeypatch):
    """mlflow's module functions (search_logged_models, pyfunc.load_model) read the store
    from the environment, as launch.py's children do."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", site["env"]["MLFLOW_TRACKING_URI"])


SKIPPING = {"training": {"run_name": "promises"},
            "data": {"image_size": 16, "channels": 1, "skip_unreadable": True}}


# ------------------------------------------------------------- the timed study (S)

def weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A ResNet18 state_dict for 3-channel input and 10 classes (so conv1 and fc do not
    fit a 1-channel, 4-class theme), with running statistics no fresh model has."""
    generator = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)
    state = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            state[key] = 0.01 * torch.randn(value.shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = 1 + 0.1 * torch.rand(value.shape, generator=generator)
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def timed_study(site, tmp_path_factory):
    folder = tmp_path_factory.mktemp("timed")
    weights = weights_file(folder / "start.pt")
    configs = tiny_config_files(
        folder / "configs", base=base_params(weights=str(folder / "start.pt"),
                                             freeze_backbone=True),
        params=SKIPPING)
    run = Launch(site["env"], folder, "--theme-id", site["theme_id"], "--configs", configs,
                 "--n-trials", TIMED_TRIALS, "--timeout", TIMEOUT_S)
    try:
        _, tune_started, _ = run.wait_for(lambda l: "continue with: " in l, timeout=400)
        run.wait(timeout=600)
    finally:
        run.close()
    output = run.output
    assert run.proc.returncode == 0, output[-5000:]
    parent_id = output.split("parent run:")[1].split()[0]
    return {"output": output, "parent_id": parent_id, "weights": weights,
            "tune_seconds": run.ended_at - tune_started, "configs": configs}


def test_timeout_ends_the_study_within_its_budget(site, timed_study):
    """--timeout S: seconds of wall time for the whole study; what finished counts."""
    client = site["client"]
    parent = client.get_run(timed_study["parent_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["timeout"] == str(float(TIMEOUT_S))
    assert parent.data.params["n_trials"] == str(TIMED_TRIALS)
    runs = children(client, timed_study["parent_id"])
    finished = [c for c in runs if c.info.status == "FINISHED"]
    assert finished, "no trial finished within the timeout"
    assert len(runs) < TIMED_TRIALS, "the study ran every trial: the timeout did nothing"
    # Trials cut off by the budget end as a stopped study's do, never left RUNNING.
    assert {c.info.status for c in runs} <= {"FINISHED", "KILLED"}
    # Tune's start to the driver's exit: the budget, plus registering the best model and
    # shutting Ray down (generous for a loaded 2-core machine). 200 trials would need
    # several minutes.
    assert timed_study["tune_seconds"] < TIMEOUT_S + 120, timed_study["tune_seconds"]
    last = [l for l in timed_study["output"].splitlines() if trials_done(l) is not None][-1]
    assert trials_done(last) < TIMED_TRIALS


def test_each_child_run_has_its_model_and_trial_config(site, timed_study):
    """log_models: all -> every finished trial's child run holds its pyfunc model and
    trial_config.yaml (the trial's own parameters)."""
    client = site["client"]
    runs = [c for c in children(client, timed_study["parent_id"])
            if c.info.status == "FINISHED"]
    models = {m.source_run_id: m for m in mlflow.search_logged_models(
        experiment_ids=[runs[0].info.experiment_id], output_format="list")}
    for child in runs:
        assert child.info.run_id in models, f"{child.info.run_name} has no model"
        path = mlflow.artifacts.download_artifacts(run_id=child.info.run_id,
                                                   artifact_path="trial_config.yaml",
                                                   tracking_uri=site["env"]["MLFLOW_TRACKING_URI"])
        trial_config = yaml.safe_load(Path(path).read_text())
        assert trial_config["training"]["learning_rate"] == pytest.approx(
            float(child.data.params["training.learning_rate"]))
        assert trial_config["training"]["optimizer"] == child.data.params["training.optimizer"]
        assert trial_config["data"]["skip_unreadable"] is True


def test_model_weights_start_every_trial_and_misfit_layers_are_skipped(site, timed_study):
    """model.weights: each trial starts from the file; conv1 (3 channels in the file, 1 in
    the theme) and fc (10 classes vs 4) are skipped. freeze_backbone keeps the rest as
    loaded, so each child's model must carry the file's backbone exactly."""
    client = site["client"]
    weights = timed_study["weights"]
    runs = [c for c in children(client, timed_study["parent_id"])
            if c.info.status == "FINISHED"]
    models = {m.source_run_id: m for m in mlflow.search_logged_models(
        experiment_ids=[runs[0].info.experiment_id], output_format="list")}
    for child in runs[:3]:   # loading a model takes a second or two: three suffice
        network = mlflow.pyfunc.load_model(
            models[child.info.run_id].model_uri).unwrap_python_model().network
        state = network.state_dict()
        assert state["conv1.weight"].shape == (64, 1, 7, 7)
        assert state["fc.weight"].shape == (4, 512)
        backbone = [k for k in weights if not k.startswith(("conv1.", "fc."))]
        assert backbone
        for key in backbone:
            assert torch.equal(state[key].cpu(), weights[key]), (child.info.run_name, key)


def test_children_are_tagged_with_the_node_ip(site, timed_study):
    import ray.util

    here = ray.util.get_node_ip_address()
    for child in children(site["client"], timed_study["parent_id"]):
        if child.info.status != "FINISHED":
            continue
        ip = child.data.tags.get("ray.node_ip", "")
        ipaddress.ip_address(ip)   # raises on anything but an address
        assert ip == here, (child.info.run_name, ip, here)   # a one-node cluster: this one
        assert len(child.data.tags["ray.node_id"]) >= 16


def test_unreadable_file_is_skipped_and_counted_on_the_parent_run(site, timed_study):
    parent = site["client"].get_run(timed_study["parent_id"])
    assert parent.data.params["skipped_unreadable"] == "1"
    split = sum(int(parent.data.params[k]) for k in ("n_train", "n_valid", "n_test"))
    assert split == 4 * 24 - 1


# ------------------------------------------- two launches sharing one study (A, B)

@pytest.fixture(scope="module")
def shared_studies(site, tmp_path_factory):
    """Launch A (1000 trials, one at a time) and, once A runs a trial, launch B (2 trials)
    with the same journal storage and study name. When B has ended and A has finished a
    trial it asked after B's end, A gets SIGINT, then a second SIGINT once it says it is
    stopping."""
    folder = tmp_path_factory.mktemp("shared")
    journal = folder / "study.log"
    configs = tiny_config_files(folder / "configs", base=base_params(), params=SKIPPING,
                                infra={"mlflow": {"log_models": "none"},
                                       "ray": {"storage_path": str(folder / "ray_results")},
                                       "resources": {"cpu": 1, "gpu": 0},
                                       "max_concurrent_trials": 1,
                                       "cache_dir": str(folder / "cache")})
    common = ["--theme-id", site["theme_id"], "--configs", configs,
              "--storage", f"journal:{journal}", "--study-name", "shared"]
    a = Launch(site["env"], folder, *common, "--n-trials", SHARED_TRIALS_A)
    b = None
    try:
        a.wait_for(lambda l: re.search(r"trials 0/\d+ done \| 1 running", l), timeout=400)
        b = Launch(site["env"], folder, *common, "--n-trials", SHARED_TRIALS_B)
        b.wait(timeout=600)
        seen = len(a.lines)
        done_at_b_end = max([trials_done(l) or 0 for _, l in a.lines] + [0])
        # The trial running when B ended, then one A asked after it.
        a.wait_for(lambda l: (trials_done(l) or 0) >= done_at_b_end + 2, timeout=300,
                   after=seen)
        a.proc.send_signal(signal.SIGINT)
        a.wait_for(lambda l: "SIGINT received" in l, timeout=120)
        second = time.monotonic()
        a.proc.send_signal(signal.SIGINT)
        a.wait(timeout=300)
    finally:
        a.close()
        if b is not None:
            b.close()
    return {"a": a, "b": b, "journal": journal, "configs": configs,
            "second_signal_to_exit_s": a.ended_at - second,
            "a_parent": parent_of(a.output), "b_parent": parent_of(b.output)}


def test_two_launches_share_one_study_at_the_same_time(site, shared_studies):
    a, b = shared_studies["a"], shared_studies["b"]
    assert b.proc.returncode == 0, b.output[-5000:]
    assert f"registered:      promise_digits_model" in b.output
    from tuning.optuna_adapter import open_storage

    study = optuna.load_study(study_name="shared",
                              storage=open_storage(f"journal:{shared_studies['journal']}"))
    origin = {t.number: t.user_attrs.get("themetune.parent_run_id") for t in study.trials}
    numbers_a = sorted(n for n, p in origin.items() if p == shared_studies["a_parent"])
    numbers_b = sorted(n for n, p in origin.items() if p == shared_studies["b_parent"])
    # One numbering for the two launches: each trial comes from one of them.
    assert len(numbers_b) == SHARED_TRIALS_B and len(numbers_a) >= 3
    assert len(numbers_a) + len(numbers_b) == len(study.trials)
    # At the same time: A asked trials before B started and after B ended.
    assert numbers_a[0] < numbers_b[0] and numbers_b[-1] < numbers_a[-1], (numbers_a, numbers_b)
    # B's child runs carry the numbers of the shared study, and their values.
    client = site["client"]
    by_number = {t.number: t for t in study.trials}
    runs_b = children(client, shared_studies["b_parent"])
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in runs_b) == numbers_b
    for child in runs_b:
        trial = by_number[int(child.data.tags["optuna.trial_number"])]
        assert child.info.run_name == f"trial_{trial.number}"
        assert trial.state.name == "COMPLETE"
        assert trial.value == pytest.approx(child.data.metrics["test_acc"])
        assert trial.user_attrs["mlflow.run_id"] == child.info.run_id
    assert client.get_run(shared_studies["b_parent"]).data.params["storage"] == \
        f"journal:{shared_studies['journal']}"


def test_second_signal_stops_at_once(shared_studies):
    a = shared_studies["a"]
    output = a.output
    assert a.proc.returncode == 130, output[-5000:]
    assert "send it again to stop at once" in output
    assert "interrupted" in output
    # Generous for a loaded machine; the first signal's graceful stop alone would also
    # close the Tune experiment, but it waits for nothing the second one does.
    assert shared_studies["second_signal_to_exit_s"] < 60, shared_studies


# --------------------------------------------------------------------- --resume

def resume_of(experiment: Path) -> dict:
    return json.loads((experiment / RESUME_FILE).read_text())


def a_experiment(shared_studies) -> Path:
    match = re.search(r"continue with: python launch.py --resume (\S+)",
                      shared_studies["a"].output)
    assert match, shared_studies["a"].output[-3000:]
    return Path(match.group(1))


def test_resume_without_a_folder_takes_the_newest_unfinished_and_refuses_changes(
        site, shared_studies, capsys, monkeypatch):
    """`--resume` alone: the newest unfinished experiment under ray.storage_path (here
    A's; B's finished; an older unfinished one is planted). Asking it to run with
    another --n-trials is refused before anything starts (exit 2, one line)."""
    experiment = a_experiment(shared_studies)
    assert not resume_of(experiment)["finished"]
    older = experiment.parent / "shared-19990101-000000"
    older.mkdir()
    stale = {**resume_of(experiment), "overrides": {**resume_of(experiment)["overrides"],
                                                     "n_trials": 999}}
    (older / RESUME_FILE).write_text(json.dumps(stale))
    os.utime(older / RESUME_FILE, (time.time() - 86400, time.time() - 86400))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", site["env"]["MLFLOW_TRACKING_URI"])
    capsys.readouterr()

    code = launch.main(["--resume", "--configs", str(shared_studies["configs"]),
                        "--n-trials", "5"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    # 1000 is A's; the planted older one says 999, B (finished) said 2.
    assert "--n-trials 5 differs from the study's 1000" in lines[0]
    assert "Traceback" not in err
    # Nothing was resumed: A's parent run is as the stop left it.
    parent = site["client"].get_run(shared_studies["a_parent"])
    assert parent.info.status == "KILLED" and "themetune.resumes" not in parent.data.tags


@pytest.mark.parametrize("change", ["storage", "theme", "tracking_uri"])
def test_resume_with_changed_values_is_refused(site, shared_studies, tmp_path, capsys,
                                               monkeypatch, change):
    experiment = a_experiment(shared_studies)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", site["env"]["MLFLOW_TRACKING_URI"])
    argv = ["--resume", str(experiment)]
    expected = {"storage": "--storage", "theme": "--theme-id",
                "tracking_uri": "MLFLOW_TRACKING_URI"}[change]
    if change == "storage":
        argv += ["--storage", f"sqlite:///{tmp_path / 'other.db'}"]
    elif change == "theme":
        argv += ["--theme-id", str(site["theme_id"] + 1)]
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    capsys.readouterr()
    code = launch.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0] and "Fix:" in lines[0]
    assert not (tmp_path / "other.db").exists()


def test_resume_without_a_folder_when_nothing_is_unfinished(timed_study, capsys):
    capsys.readouterr()
    code = launch.main(["--resume", "--configs", str(timed_study["configs"])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "no unfinished experiment" in err and "--resume" in err
    assert len(err.strip().splitlines()) == 1
