"""A real multi-node Ray cluster on this machine (cluster/local.sh), for the tests that
submit studies to it as Ray jobs; and helpers to talk to it as a user's shell would."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SH = ROOT / "cluster" / "local.sh"
PYTHON = Path(sys.executable)
RAY = PYTHON.with_name("ray")
SUBMIT = ROOT / "cluster" / "submit.py"

# What the client shell must not carry over from the test run.
_CLIENT_DROP = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                "MLFLOW_RUN_ID", "DJANGO_SETTINGS_MODULE", "PYTHONPATH")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports() -> dict[str, int]:
    """A base P with P..P+399 free-looking (node ports), and three single ports."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(30000, 45000, 500)
        if all(_free(base + k) for k in range(0, 400, 7)) and all(
                _free(base + 450 + k) for k in range(3)):
            return {"base": base, "gcs": base + 450, "dashboard": base + 451,
                    "client": base + 452}
    raise RuntimeError("no free port range found")


def marked_pids(state: Path) -> list[int]:
    """Processes that carry this cluster's marker (cluster/local.sh sets it on nodes)."""
    needle = f"THEMETUNE_LOCAL_CLUSTER={state}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


class LocalCluster:
    def __init__(self, state: Path, ports: dict[str, int], net: str):
        self.state = state
        self.ports = ports
        self.net = net
        self.token_file = state / "auth_token"
        self.address = f"http://127.0.0.1:{ports['dashboard']}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """A user's shell after `eval "$(cluster/local.sh env)"`."""
        env = {k: v for k, v in os.environ.items() if k not in _CLIENT_DROP}
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(self.token_file))
        env.update(extra)
        return env

    def job_info(self, submission_id: str) -> dict:
        code = ("import json, sys\n"
                "from ray.job_submission import JobSubmissionClient\n"
                "info = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2])\n"
                "print(json.dumps({'status': str(info.status.value),"
                " 'message': info.message or '', 'entrypoint': info.entrypoint,"
                " 'metadata': info.metadata or {}}))\n")
        out = subprocess.run([str(PYTHON), "-c", code, self.address, submission_id],
                             env=self.client_env(), capture_output=True, text=True,
                             timeout=60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def job_logs(self, submission_id: str) -> str:
        return subprocess.run([str(RAY), "job", "logs", submission_id],
                              env=self.client_env(), capture_output=True, text=True,
                              timeout=60).stdout


@contextmanager
def started_cluster(*, workers: int, head_cpus: int, worker_cpus: int):
    """cluster/local.sh up with token auth on; down at the end, whatever happened, and
    no process of it may be left."""
    state = Path(f"/tmp/tt-test-{os.getpid()}-{random.randrange(10**6)}")  # short: socket paths
    ports = _free_ports()
    subnet = f"10.213.{random.randrange(100, 250)}"
    name = f"t{random.randrange(10**4)}"
    up = [str(LOCAL_SH), "up", "--state-dir", str(state), "--workers", str(workers),
          "--head-cpus", str(head_cpus), "--worker-cpus", str(worker_cpus),
          "--token-file", str(state / "auth_token"),
          "--port", str(ports["gcs"]), "--dashboard-port", str(ports["dashboard"]),
          "--client-port", str(ports["client"]), "--port-base", str(ports["base"]),
          "--subnet", subnet, "--name", name]
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_DROP}
    env["THEMETUNE_PYTHON"] = str(PYTHON)
    try:
        result = subprocess.run(up, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0 and "timed out during startup" in result.stdout + result.stderr:
            # Ray gives each raylet 30 s to register (hard-coded); `make test`'s parallel
            # workers can make a node miss it. local.sh tore the cluster down: once more.
            result = subprocess.run(up, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        net = "netns" if "(netns)" in result.stdout else "loopback"
        yield LocalCluster(state, ports, net)
    finally:
        subprocess.run([str(LOCAL_SH), "down", "--state-dir", str(state)], env=env,
                       capture_output=True, text=True, timeout=120)
        left = marked_pids(state)
        for pid in left:   # only processes of this cluster, by id
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", str(state)], check=False)
        assert not left, f"cluster/local.sh down left processes running: {left}"


@pytest.fixture(scope="module")
def local_cluster():
    """A head and one worker of 1 CPU each."""
    with started_cluster(workers=1, head_cpus=1, worker_cpus=1) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def site(tmp_path_factory, digits_folder):
    """A migrated SQLite DB with one theme, and the MLflow store: absolute paths, which
    cluster/submit.py passes to the job (its driver runs on the head: this machine)."""
    folder = tmp_path_factory.mktemp("cluster-site")
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",
                                                           "MLFLOW_RUN_ID")}
    env.update(DATABASE_URL=f"sqlite:///{folder / 'db.sqlite3'}", MEDIA_ROOT=str(folder / "media"),
               MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
    manage = [str(PYTHON), str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=folder)
    out = subprocess.run([*manage, "import_theme", str(digits_folder), "--name", "cluster_digits"],
                         env=env, check=True, cwd=folder, capture_output=True, text=True)
    return {"folder": folder, "theme_id": int(out.stdout.strip().splitlines()[-1]),
            "urls": {k: env[k] for k in ("DATABASE_URL", "MEDIA_ROOT", "MLFLOW_TRACKING_URI")}}


def configs(folder: Path, *, storage_path: str, study: str, n_trials: int, epochs: int,
            **infra_extra) -> Path:
    infra = {"mlflow": {"tracking_uri": "sqlite:///mlflow.db", "log_models": "all"},
             "ray": {"storage_path": storage_path},
             "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2,
             "cache_dir": str(folder / "cache"), **infra_extra}
    # Light checkpoints: a study here writes one per epoch to a shared folder, up to 30
    # epochs of 4 trials.
    return tiny_config_files(folder, n_trials=n_trials, epochs=epochs, infra=infra,
                             study={"name": study}, light_checkpoints=True)


def submit(cluster, site, config_dir: Path, *, wait: bool) -> tuple[str, subprocess.CompletedProcess]:
    cmd = [str(PYTHON), str(SUBMIT), "--theme-id", str(site["theme_id"]),
           "--configs", str(config_dir), *([] if wait else ["--no-wait"])]
    result = subprocess.run(cmd, env=cluster.client_env(**site["urls"]), capture_output=True,
                            text=True, timeout=420, cwd=ROOT)
    match = re.search(r"^submission id: (\S+)$", result.stdout, re.M)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    return match.group(1), result


def wait_for_status(cluster, sid: str, statuses: set[str], timeout: float) -> dict:
    deadline = time.time() + timeout
    while True:
        info = cluster.job_info(sid)
        if info["status"] in statuses or time.time() > deadline:
            return info
        time.sleep(2)


def child_runs(site, parent_id: str):
    client = MlflowClient(site["urls"]["MLFLOW_TRACKING_URI"])
    parent = client.get_run(parent_id)
    return parent, client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def parent_run_of(sid: str, site) -> str:
    db = sqlite3.connect(site["folder"] / "db.sqlite3")
    row = db.execute("select mlflow_parent_run_id from data_access_tuningstudy "
                     "where ray_job_id = ?", (sid,)).fetchone()
    assert row, f"no study record with ray_job_id {sid}"
    return row[0]
