"""A real multi-node Ray cluster on this machine (cluster/local.sh), for the tests that
submit studies to it as Ray jobs; and helpers to talk to it as a user's shell would."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SH = ROOT / "cluster" / "local.sh"
PYTHON = Path(sys.executable)
RAY = PYTHON.with_name("ray")

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


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """cluster/local.sh up: a head and one worker of 1 CPU each, token auth on; down at
    the end, whatever happened, and no process of it may be left."""
    state = Path(f"/tmp/tt-test-{os.getpid()}-{random.randrange(10**6)}")  # short: socket paths
    ports = _free_ports()
    subnet = f"10.213.{random.randrange(100, 250)}"
    name = f"t{random.randrange(10**4)}"
    up = [str(LOCAL_SH), "up", "--state-dir", str(state), "--workers", "1",
          "--head-cpus", "1", "--worker-cpus", "1", "--token-file", str(state / "auth_token"),
          "--port", str(ports["gcs"]), "--dashboard-port", str(ports["dashboard"]),
          "--client-port", str(ports["client"]), "--port-base", str(ports["base"]),
          "--subnet", subnet, "--name", name]
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_DROP}
    env["THEMETUNE_PYTHON"] = str(PYTHON)
    try:
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
