"""Studies as Ray jobs on a real multi-node cluster (cluster/local.sh: a head and a
worker, each its own `ray start`, in its own network namespace when run as root), with
token auth on: `ray job submit` through cluster/submit.py, as a user would."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.conftest import (
    PYTHON,
    RAY,
    SUBMIT,
    child_runs,
    configs,
    parent_run_of,
    submit,
    wait_for_status,
)

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

def test_study_job_runs_trials_on_two_nodes(local_cluster, site, tmp_path):
    """The whole path: submit -> SUCCEEDED, trials on both nodes, each trial its child
    run, the best model registered, the job named after theme and study."""
    shared = local_cluster.state / "shared" / "ray_results"   # the "NFS" every node sees
    # Two trials at once on two nodes of 1 CPU each: one runs on each node. Long enough
    # that the first trial is still running when the worker's actor is up (with reused
    # actors a second trial otherwise takes the first one's freed actor).
    config_dir = configs(tmp_path / "configs", storage_path=str(shared), study="multi",
                         n_trials=2, epochs=10)
    sid, result = submit(local_cluster, site, config_dir, wait=True)
    assert re.fullmatch(rf"themetune-theme{site['theme_id']}-multi-\d{{8}}-\d{{6}}", sid)
    info = local_cluster.job_info(sid)
    assert info["status"] == "SUCCEEDED", result.stdout[-4000:] + info["message"]
    assert info["metadata"]["study_name"] == "multi"
    logs = local_cluster.job_logs(sid)
    assert "[themetune] trials 2/2 done" in logs            # the progress display
    assert "is shared by all 2 nodes" in logs               # the storage check ran

    parent_id = parent_run_of(sid, site)                    # the DB knows the job
    parent, children = child_runs(site, parent_id)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["trial_0", "trial_1"]
    assert all(c.info.status == "FINISHED" for c in children)
    nodes = {c.data.tags.get("ray.node_id") for c in children}
    assert None not in nodes and len(nodes) >= 2, nodes
    client = MlflowClient(site["urls"]["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name = 'cluster_digits_model'")
    assert parent.data.tags["registered_model"] in {
        f"cluster_digits_model/{v.version}" for v in versions}


def test_ray_job_stop_ends_the_study_with_runs_killed(local_cluster, site, tmp_path):
    shared = local_cluster.state / "shared" / "ray_results"
    config_dir = configs(tmp_path / "configs", storage_path=str(shared), study="stopped",
                         n_trials=4, epochs=500)
    sid, _ = submit(local_cluster, site, config_dir, wait=False)
    # Wait until trials run (a child run exists and is RUNNING), then stop the job.
    deadline = time.time() + 240
    parent_id = None
    while time.time() < deadline:
        if parent_id is None:
            try:
                parent_id = parent_run_of(sid, site)
            except (AssertionError, sqlite3.OperationalError):
                pass
        if parent_id:
            _, children = child_runs(site, parent_id)
            if any(c.info.status == "RUNNING" for c in children):
                break
        assert local_cluster.job_info(sid)["status"] in ("PENDING", "RUNNING")
        time.sleep(2)
    else:
        pytest.fail("no trial started in time:\n" + local_cluster.job_logs(sid)[-3000:])
    time.sleep(2)
    started = time.time()
    stop = subprocess.run([str(RAY), "job", "stop", sid], env=local_cluster.client_env(),
                          capture_output=True, text=True, timeout=180)
    assert stop.returncode == 0, stop.stderr[-2000:]
    info = wait_for_status(local_cluster, sid, {"STOPPED", "FAILED", "SUCCEEDED"}, 120)
    stop_s = time.time() - started
    assert info["status"] == "STOPPED", info
    # The driver ended by itself, well before RAY_JOB_STOP_WAIT_TIME_S (60 s) ran out.
    assert stop_s < 55, f"ray job stop took {stop_s:.0f} s: the driver hung until SIGKILL"
    logs = local_cluster.job_logs(sid)
    assert "SIGTERM received: stopping the study" in logs
    assert "interrupted: running trials and the parent run were marked KILLED" in logs
    parent, children = child_runs(site, parent_id)
    assert parent.info.status == "KILLED"
    assert children and all(c.info.status == "KILLED" for c in children), \
        [(c.info.run_name, c.info.status) for c in children]


def test_node_local_storage_path_fails_at_start(local_cluster, site, tmp_path):
    """A relative storage_path resolves in the job's copy of working_dir on the head,
    which the worker (its own mount namespace) cannot see: exit 2 before any run."""
    if local_cluster.net != "netns":
        pytest.skip("nodes share one filesystem without namespaces (not root)")
    config_dir = configs(tmp_path / "configs", storage_path="ray_results", study="nodelocal",
                         n_trials=2, epochs=1)
    client = MlflowClient(site["urls"]["MLFLOW_TRACKING_URI"])
    runs_before = len(client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000))
    sid, result = submit(local_cluster, site, config_dir, wait=True)
    info = local_cluster.job_info(sid)
    assert info["status"] == "FAILED"
    assert "exit code 2" in info["message"], info["message"]
    logs = local_cluster.job_logs(sid)
    error = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, logs[-3000:]
    assert "config.yaml: key 'ray.storage_path'" in error[0]
    assert "not shared by every node of this 2-node Ray cluster" in error[0]
    assert "marker file is not there" in error[0]
    assert "Fix: " in error[0] and "s3://" in error[0] and "NFS" in error[0]
    assert "Traceback" not in logs
    runs_after = len(client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000))
    assert runs_after == runs_before          # nothing half-written in MLflow
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    assert db.execute("select count(*) from data_access_tuningstudy where ray_job_id = ?",
                      (sid,)).fetchone() == (0,)  # nor in the database


def test_submission_without_the_token_is_refused(local_cluster, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in local_cluster.client_env().items()
            if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    cmd = [str(RAY), "job", "submit", "--address", local_cluster.address, "--", "echo", "hi"]
    no_token = subprocess.run(cmd, env={**base, "HOME": str(home)}, capture_output=True,
                              text=True, timeout=120)
    assert no_token.returncode != 0
    assert "Missing authentication token" in no_token.stderr + no_token.stdout
    (home / "wrong").write_text("0" * 64)
    wrong = subprocess.run(cmd, env={**base, "HOME": str(home), "RAY_AUTH_MODE": "token",
                                     "RAY_AUTH_TOKEN_PATH": str(home / "wrong")},
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0
    assert "Invalid authentication token" in wrong.stderr + wrong.stdout
    # And the submit helper says what is missing before asking the cluster.
    helper = subprocess.run([str(PYTHON), str(SUBMIT), "--theme-id", "1"],
                            env={**base, "HOME": str(home), "RAY_AUTH_MODE": "token"},
                            capture_output=True, text=True, timeout=60)
    assert helper.returncode == 2 and "no Ray auth token" in helper.stderr


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP listener on `port` in this network namespace."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_dashboard_listens_on_localhost_only(local_cluster):
    addrs = _listening(local_cluster.ports["dashboard"])
    assert addrs == {"0100007F"}, addrs       # 127.0.0.1, nothing else
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{local_cluster.address}/api/jobs/", timeout=10)
    assert err.value.code == 401              # the job API wants the token
