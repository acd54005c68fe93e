"""Nodes come and go while a study runs, in a real cluster (cluster/local.sh: a head
that runs no trials, and two workers of 1 CPU).

A worker node dies mid-trial: its raylet is SIGKILLed. The trial must come back from
its last checkpoint on the surviving worker, in the same child run, and the study must
end with every trial accounted for. A worker is added mid-study: waiting trials start
on it."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.conftest import (
    LOCAL_SH,
    child_runs,
    configs,
    parent_run_of,
    started_cluster,
    submit,
    wait_for_status,
)

pytestmark = [pytest.mark.ray, pytest.mark.cluster]

EPOCHS = 8


@pytest.fixture(scope="module")
def three_nodes():
    # head-cpus 0: the driver lives on the head, trials only on the workers, as on
    # most real clusters; so a trial whose worker dies has exactly one place to go.
    with started_cluster(workers=2, head_cpus=0, worker_cpus=1) as cluster:
        yield cluster


def raylets():
    """(pid, argv) of every raylet on this machine; its argv names its node id and the
    node's temp dir."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/raylet"):
            yield int(entry.name), argv


def raylet_pid(node_id: str) -> int:
    """The pid of the raylet that runs the Ray node `node_id`."""
    for pid, argv in raylets():
        if f"--node_id={node_id}".encode() in argv:
            return pid
    raise AssertionError(f"no raylet process for node {node_id}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited too.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_killed_worker_node_trial_resumes_on_the_survivor(three_nodes, site, tmp_path):
    shared = three_nodes.state / "shared" / "ray_results"
    config_dir = configs(tmp_path / "configs", storage_path=str(shared), study="nodeloss",
                         n_trials=2, epochs=EPOCHS, failure={"max_failures": 2},
                         mlflow={"tracking_uri": "sqlite:///mlflow.db", "log_models": "none"})
    sid, _ = submit(three_nodes, site, config_dir, wait=False)
    client = MlflowClient(site["urls"]["MLFLOW_TRACKING_URI"])

    # Wait until a trial has reported an epoch (its checkpoint is then on the shared
    # storage) and is still running; then kill its node's raylet.
    deadline = time.time() + 300
    parent_id = victim = None
    while time.time() < deadline and victim is None:
        time.sleep(1)
        assert three_nodes.job_info(sid)["status"] in ("PENDING", "RUNNING"), \
            three_nodes.job_logs(sid)[-3000:]
        if parent_id is None:
            try:
                parent_id = parent_run_of(sid, site)
            except (AssertionError, sqlite3.OperationalError):
                continue
        for child in child_runs(site, parent_id)[1]:
            history = client.get_metric_history(child.info.run_id, "valid_loss")
            node = child.data.tags.get("ray.node_id")
            if history and node and child.info.status == "RUNNING" \
                    and max(m.step for m in history) <= EPOCHS - 3:
                victim = {"run": child.info.run_id, "node": node,
                          "after_epoch": max(m.step for m in history)}
                break
    assert victim, "no trial reached its first epoch in time:\n" + \
        three_nodes.job_logs(sid)[-3000:]
    pid = raylet_pid(victim["node"])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    info = wait_for_status(three_nodes, sid, {"SUCCEEDED", "FAILED", "STOPPED"}, 480)
    logs = three_nodes.job_logs(sid)
    assert info["status"] == "SUCCEEDED", info["message"] + logs[-4000:]
    # The node is really gone: its raylet, and its `ray start`, which ends with it.
    assert not alive(pid)
    node_starters = [int(p.read_text()) for p in (three_nodes.state / "pids").glob("worker-*.pid")]
    assert sum(alive(p) for p in node_starters) == 1, "expected one of the two workers left"

    parent, children = child_runs(site, parent_id)
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["trial_0", "trial_1"]  # no duplicate
    assert all(c.info.status == "FINISHED" for c in children), \
        [(c.info.run_name, c.info.status) for c in children]
    moved = client.get_run(victim["run"])
    assert moved.data.tags["ray.node_id"] != victim["node"]      # it ran on to the survivor
    # One retry, from the checkpoint of an epoch at or after the one seen before the kill
    # (not from scratch); the reason names the lost node.
    tags = moved.data.tags
    assert tags["themetune.retries"] == "1", tags
    assert victim["after_epoch"] <= int(tags["themetune.resumed_from_epoch"]) < EPOCHS, tags
    assert f"[on node {victim['node']}]" in tags["themetune.retry_reason_1"], tags
    # Every epoch once, none missing.
    for name in ("train_loss", "valid_loss", "valid_acc"):
        steps = sorted(m.step for m in client.get_metric_history(victim["run"], name))
        assert steps == list(range(1, EPOCHS + 1)), (name, steps)
    assert "test_acc" in moved.data.metrics
    assert "[themetune] trials 2/2 done" in logs
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    states = db.execute(
        "select t.number, t.state from data_access_tuningtrial t join data_access_tuningstudy s"
        " on t.study_id = s.id where s.ray_job_id = ? order by t.number", (sid,)).fetchall()
    assert [s[0] for s in states] == [0, 1] and {s[1] for s in states} == {"COMPLETE"}, states
    print(f"node {victim['node'][:8]} killed after epoch {victim['after_epoch']}, resumed "
          f"from epoch {tags['themetune.resumed_from_epoch']}; study done "
          f"{time.time() - killed_at:.0f} s later; reason: {tags['themetune.retry_reason_1']}")


def node_id_of(state: Path, label: str) -> str:
    """The Ray node id of the node cluster/local.sh started as `label`."""
    folder = f"{state}/nodes/{label}/".encode()
    for _, argv in raylets():
        if any(folder in a for a in argv):
            return next(a for a in argv if a.startswith(b"--node_id=")).split(b"=", 1)[1].decode()
    raise AssertionError(f"no raylet for {label}")


def test_worker_added_mid_study_takes_trials(three_nodes, site, tmp_path):
    """More trials than CPUs: some wait. `cluster/local.sh add-worker` adds a node while
    the study runs, and Tune starts waiting trials on it at once."""
    shared = three_nodes.state / "shared" / "ray_results"
    # Trials long enough (~30 s) that the new node's first actor is up (a new worker
    # process imports torch: seconds) before a running trial ends: with reused actors,
    # Tune hands a waiting trial to the first actor that is free, old or new.
    n_trials = 4
    config_dir = configs(tmp_path / "configs", storage_path=str(shared), study="scaleout",
                         n_trials=n_trials, epochs=30, max_concurrent_trials=3,
                         mlflow={"tracking_uri": "sqlite:///mlflow.db", "log_models": "none"})
    sid, _ = submit(three_nodes, site, config_dir, wait=False)
    deadline = time.time() + 300
    while True:   # a trial runs, so the study is past its start
        assert time.time() < deadline, three_nodes.job_logs(sid)[-3000:]
        assert three_nodes.job_info(sid)["status"] in ("PENDING", "RUNNING"), \
            three_nodes.job_logs(sid)[-3000:]
        if "| 1 running |" in three_nodes.job_logs(sid) or \
                "| 2 running |" in three_nodes.job_logs(sid):
            break
        time.sleep(1)
    env = {**three_nodes.client_env(), "THEMETUNE_PYTHON": sys.executable}
    added = subprocess.run([str(LOCAL_SH), "add-worker", "--state-dir", str(three_nodes.state)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert added.returncode == 0, added.stdout[-2000:] + added.stderr[-2000:]
    new_label = re.search(r"^(worker-\d+) joined", added.stdout, re.M).group(1)
    new_node = node_id_of(three_nodes.state, new_label)

    info = wait_for_status(three_nodes, sid, {"SUCCEEDED", "FAILED", "STOPPED"}, 480)
    logs = three_nodes.job_logs(sid)
    assert info["status"] == "SUCCEEDED", info["message"] + logs[-4000:]
    parent, children = child_runs(site, parent_run_of(sid, site))
    assert len(children) == n_trials and all(c.info.status == "FINISHED" for c in children)
    on_new = [c.info.run_name for c in children if c.data.tags.get("ray.node_id") == new_node]
    assert on_new, ("no trial ran on the added node", new_node, [
        (c.info.run_name, c.data.tags.get("ray.node_id"), c.info.start_time) for c in children])
    print(f"{new_label} added; trials on it: {sorted(on_new)}")
