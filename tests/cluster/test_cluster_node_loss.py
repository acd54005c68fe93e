"""A worker node dies mid-trial, for real: its raylet is SIGKILLed in a 3-node cluster
(cluster/local.sh: a head that runs no trials, and two workers). The trial must come
back from its last checkpoint on the surviving worker, in the same child run, and the
study must end with every trial accounted for."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.conftest import (child_runs, configs, parent_run_of, started_cluster,
                                    submit, wait_for_status)

pytestmark = pytest.mark.ray

EPOCHS = 8


@pytest.fixture(scope="module")
def three_nodes():
    # head-cpus 0: the driver lives on the head, trials only on the workers, as on
    # most real clusters; so a trial whose worker dies has exactly one place to go.
    with started_cluster(workers=2, head_cpus=0, worker_cpus=1) as cluster:
        yield cluster


def raylet_pid(node_id: str) -> int:
    """The pid of the raylet that runs the Ray node `node_id` (it is in its argv)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"/raylet") and f"--node_id={node_id}".encode() in argv:
            return int(entry.name)
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
