"""One driver per study (tuning.recovery.lease), and the resume of a study whose driver
died after its last trial but before its bookkeeping."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import Driver, run_launch, trial_folder_files, trials_done
from tuning.processes import process_start_time
from tuning.recovery import lease
from tuning.recovery.resume import RESUME_FILE

# -- the lease file, against real processes --------------------------------------------

@pytest.fixture
def other_process():
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write_lease(folder: Path, *, pid: int, pid_start: str, host: str | None = None,
                 age_s: float = 0.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / lease.LEASE_FILE).write_text(json.dumps({
        "host": host or socket.gethostname(), "pid": pid, "pid_start": pid_start,
        "token": "theirs", "heartbeat_at": time.time() - age_s}))


def _holder_token(folder: Path) -> str:
    return json.loads((folder / lease.LEASE_FILE).read_text())["token"]


def test_lease_of_a_live_driver_is_refused(tmp_path, other_process):
    _write_lease(tmp_path, pid=other_process.pid, pid_start=process_start_time(other_process.pid))
    with pytest.raises(lease.LeaseHeldError) as refused:
        lease.acquire(str(tmp_path))
    assert f"pid {other_process.pid} on host {socket.gethostname()}" in refused.value.one_line()
    with pytest.raises(lease.LeaseHeldError):
        lease.check_free(str(tmp_path))
    assert _holder_token(tmp_path) == "theirs"


@pytest.mark.parametrize("case", ["dead pid", "pid reused", "no heartbeat"])
def test_lease_of_a_gone_driver_is_taken_over(tmp_path, other_process, capsys, monkeypatch,
                                              case):
    monkeypatch.setenv(lease.STALE_ENV, "30")
    if case == "dead pid":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        start = process_start_time(gone.pid)
        gone.wait()
        _write_lease(tmp_path, pid=gone.pid, pid_start=start)
        why = f"its process {gone.pid} is gone"
    elif case == "pid reused":   # alive, but not the process that took the lease
        _write_lease(tmp_path, pid=other_process.pid, pid_start="1")
        why = f"pid {other_process.pid} now belongs to another process"
    else:                        # on another host: only its heartbeat can tell
        _write_lease(tmp_path, pid=other_process.pid, pid_start="1", host="elsewhere",
                     age_s=31)
        why = "no heartbeat for 31 s"
    lease.check_free(str(tmp_path))
    held = lease.acquire(str(tmp_path))
    try:
        assert _holder_token(tmp_path) == held.record.token
    finally:
        held.release()
    warning = capsys.readouterr().err
    assert f"took over the lease of {tmp_path}" in warning and why in warning, warning
    assert not (tmp_path / lease.LEASE_FILE).exists()


def test_lease_of_another_host_with_a_fresh_heartbeat_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(lease.STALE_ENV, "30")
    _write_lease(tmp_path, pid=1, pid_start="1", host="elsewhere", age_s=5)
    with pytest.raises(lease.LeaseHeldError, match="pid 1 on host elsewhere"):
        lease.acquire(str(tmp_path))


def test_lease_heartbeat_renews_until_released(tmp_path, monkeypatch):
    monkeypatch.setattr(lease, "HEARTBEAT_S", 0.05)
    held = lease.acquire(str(tmp_path / "experiment"))
    first = held.record.heartbeat_at
    time.sleep(0.5)
    renewed = json.loads((tmp_path / "experiment" / lease.LEASE_FILE).read_text())
    held.release()
    assert renewed["heartbeat_at"] > first and renewed["pid"] == os.getpid()
    assert not (tmp_path / "experiment").exists()   # nothing else was written there


# -- real drivers ----------------------------------------------------------------------

def _run_ids(client: MlflowClient, experiment_id: str) -> set[str]:
    return {r.info.run_id for r in client.search_runs([experiment_id], run_view_type=3)}


def _resume_target(started: str) -> tuple[list[str], Path, str]:
    """From a driver's "continue with: ..." line: the --resume arguments, the experiment
    folder and the MLflow parent run."""
    resume_args = shlex.split(started.split("continue with: ")[1])[2:]
    experiment = Path(resume_args[1])
    parent_id = json.loads((experiment / RESUME_FILE).read_text())["parent_run_id"]
    return resume_args, experiment, parent_id


@pytest.mark.ray
def test_reliability_second_driver_refused_then_dead_one_taken_over(site, tmp_path):
    """A resume while the first driver runs: exit 2 at once naming it, nothing written;
    once it is SIGKILLed, a resume takes its lease over and finishes the study."""
    configs = tiny_config_files(tmp_path / "configs", n_trials=1, epochs=10,
                                light_checkpoints=True)
    client = MlflowClient(site["env"]["MLFLOW_TRACKING_URI"])
    first = Driver(site["env"], tmp_path, "--theme-id", site["theme_id"], "--configs",
                   configs, "--study-name", "leased")
    try:
        started = first.wait_for(lambda line: "continue with: " in line, timeout=300)
        resume_args, experiment, parent_id = _resume_target(started)
        experiment_id = client.get_run(parent_id).info.experiment_id

        refused = run_launch(site["env"], tmp_path, *resume_args, timeout=120)
        assert first.proc.poll() is None, "the first driver ended before the test could race it"
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"pid {first.proc.pid} on host {socket.gethostname()}" in errors[0]
        # Nothing written by the refused driver: the parent run was not reopened.
        assert "themetune.resumes" not in client.get_run(parent_id).data.tags
        assert len(client.search_runs([experiment_id], "tags.`themetune.study_name` = "
                                      "'leased' and tags.`themetune.role` = 'parent'")) == 1
        os.killpg(first.proc.pid, signal.SIGKILL)   # the driver and its Ray: a crash
        first.wait(timeout=60)
    finally:
        first.close()
    children_before = {r for r in _run_ids(client, experiment_id) if r != parent_id}

    result = run_launch(site["env"], tmp_path, *resume_args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"took over the lease of {experiment} from the driver pid {first.proc.pid}" \
        in result.stderr
    assert f"its process {first.proc.pid} is gone" in result.stderr
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["themetune.resumes"] == "1"
    assert children_before <= _run_ids(client, experiment_id)
    assert not (experiment / lease.LEASE_FILE).exists()


@pytest.mark.ray
def test_reliability_resume_after_the_last_trial_only_does_the_bookkeeping(site, tmp_path):
    """The driver dies between its last trial and the best model: a resume logs the best
    params and model and registers it, and no trial starts again."""
    configs = tiny_config_files(tmp_path / "configs", n_trials=2, epochs=1)
    client = MlflowClient(site["env"]["MLFLOW_TRACKING_URI"])
    first = Driver(site["env"], tmp_path, "--theme-id", site["theme_id"], "--configs",
                   configs, "--study-name", "bookkept")
    try:
        started = first.wait_for(lambda line: "continue with: " in line, timeout=300)
        # The last trial's end is printed once it is recorded; the best model takes the
        # driver seconds more (Tune's shutdown, then the checkpoint into MLflow).
        first.wait_for(lambda line: trials_done(line) == 2, timeout=400)
        first.kill()
    finally:
        first.close()
    resume_args, experiment, parent_id = _resume_target(started)
    parent = client.get_run(parent_id)
    assert "best_value" not in parent.data.metrics, "the driver got past its last trial"
    children = {r for r in _run_ids(client, parent.info.experiment_id) if r != parent_id}
    trial_files = trial_folder_files(experiment)

    result = run_launch(site["env"], tmp_path, *resume_args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "no trial runs again" in result.stdout
    # No trial started again (nothing new), and the end steps removed the checkpoints
    # of trials whose models are in MLflow but the best's.
    after = trial_folder_files(experiment)
    assert after <= trial_files, after - trial_files
    assert len({f for f in after if "/checkpoint_" in f}) == 1, after
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["themetune.resumes"] == "1"
    assert "best_value" in parent.data.metrics
    assert any(k.startswith("best.") for k in parent.data.params)
    assert children == {r for r in _run_ids(client, parent.info.experiment_id)
                        if r != parent_id}
    version = parent.data.tags["registered_model"].split("/")[1]
    assert client.get_model_version("crash_digits_model", version).tags[
        "parent_run_id"] == parent_id

    again = run_launch(site["env"], tmp_path, *resume_args)
    assert again.returncode == 2 and "already finished" in again.stderr
