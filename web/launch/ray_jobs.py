"""A study as a Ray job, through Ray's Job Submission SDK: `launch.py` is the entrypoint,
as with `ray job submit`.

The job's working_dir is a staged copy of the code and the study's configs, not the
repository: Ray skips what .gitignore lists, and the runs folder is listed there.
Authentication: with Ray's token auth on (the default from 2.59), the web server needs
RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

# What the job's driver needs of the repository: the entry point and its packages.
CODE = ("launch.py", "tuning", "theme_classifier", "data_access", "web")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "static", "templates", "locale")


_SUBMIT_TRIES = 10


class RayJobError(RuntimeError):
    """The cluster could not be reached, or refused the job."""


@dataclass(frozen=True)
class JobState:
    status: str       # PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    message: str

    @property
    def ended(self) -> bool:
        return self.status in ("STOPPED", "SUCCEEDED", "FAILED")


def stage_working_dir(*, repo: Path, configs: Path, job_dir: Path,
                      entry_point: Path | None = None) -> Path:
    """job_dir/ with the code and configs/ (and the entry point, when it is not the
    repository's launch.py); returns it."""
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    for name in CODE:
        source = repo / name
        if source.is_dir():
            shutil.copytree(source, job_dir / name, ignore=_IGNORE)
        else:
            shutil.copy2(source, job_dir / name)
    if entry_point is not None and not (job_dir / entry_point.name).exists():
        shutil.copy2(entry_point, job_dir / entry_point.name)
    shutil.copytree(configs, job_dir / "configs")
    return job_dir


def _auth_headers() -> dict[str, str] | None:
    """The cluster's token, sent as Ray's own clients send it. Explicit: Ray reads its
    auth mode once per process, and a process that ran a local Ray (a test run, a
    notebook) would otherwise send nothing to a cluster that wants a token."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.read_text().strip()
        except OSError:
            return None
    return {"Authorization": f"Bearer {token}"} if token else None


def _client(address: str):
    # Imported here: the web UI without a cluster never pays for importing Ray.
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=_auth_headers())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayJobError(f"cannot reach the Ray cluster at {address}: {exc}") from exc


def submit(*, address: str, entrypoint: str, working_dir: Path, env_vars: dict[str, str],
           submission_id: str, metadata: dict[str, str]) -> str:
    client = _client(address)
    for attempt in range(_SUBMIT_TRIES):
        try:
            return client.submit_job(
                entrypoint=entrypoint, submission_id=submission_id, metadata=metadata,
                runtime_env={"working_dir": str(working_dir), "env_vars": env_vars})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            # A head that has just started answers before its job agent is up, and
            # says so ("No available agent ..., please try again later").
            if "try again later" in str(exc) and attempt + 1 < _SUBMIT_TRIES:
                time.sleep(2)
                continue
            raise RayJobError(f"the Ray cluster at {address} refused the job: {exc}") from exc
    raise AssertionError("unreachable")


def state(*, address: str, job_id: str) -> JobState:
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except (ConnectionError, RuntimeError) as exc:
        raise RayJobError(f"cannot read job {job_id} at {address}: {exc}") from exc
    return JobState(status=str(getattr(info.status, "value", info.status)),
                    message=info.message or "")


def stop(*, address: str, job_id: str) -> bool:
    """`ray job stop`: Ray interrupts the driver, then kills it after its grace period."""
    client = _client(address)
    try:
        return bool(client.stop_job(job_id))
    except (ConnectionError, RuntimeError) as exc:
        raise RayJobError(f"cannot stop job {job_id} at {address}: {exc}") from exc


def logs(*, address: str, job_id: str) -> str:
    client = _client(address)
    try:
        return client.get_job_logs(job_id)
    except (ConnectionError, RuntimeError) as exc:
        raise RayJobError(f"cannot read the logs of job {job_id} at {address}: {exc}") from exc
