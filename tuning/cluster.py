"""Connecting the driver to Ray: a local one-node cluster, or an existing cluster;
and checking that a multi-node cluster can use the Tune storage path."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import theme_classifier
import tuning
from tuning.config.infra import RaySection
from tuning.storage import is_remote_storage, local_storage_path
from tuning.tracking import output


def ensure_ray(section: RaySection) -> None:
    import ray

    _set_tune_flags()
    if ray.is_initialized():
        return
    # Inside `ray job submit`, RAY_ADDRESS points at the cluster that runs the job.
    if joins_a_cluster(section):
        address = section.address or os.environ["RAY_ADDRESS"]
        # Inside a Ray job the job's working_dir already carries the code; a driver
        # that joins a cluster by itself ships the packages its trials import (the
        # trial runs the shipped model's preprocessing, hence theme_classifier).
        runtime_env = None if in_ray_job() else {"py_modules": [tuning, theme_classifier]}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    # address="local" always starts a new cluster: a stale /tmp/ray/ray_current_cluster
    # left by a crashed one would otherwise be joined and fail. Its workers run this
    # interpreter, so they import the installed packages (`pip install -e .`).
    ray.init(address="local", num_cpus=section.num_cpus, num_gpus=section.num_gpus,
             include_dashboard=True, dashboard_host=section.dashboard_host,
             log_to_driver=False)


def _set_tune_flags() -> None:
    # The study metric (e.g. test_acc) arrives only in a trial's last report; Tune's
    # strict check would reject every earlier one.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Every epoch checkpoints; with num_to_keep set, Tune warns on each snapshot.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


# Set by Ray's job supervisor in the environment of a job's entrypoint (Ray 2.60 sets no
# RAY_JOB_SUBMISSION_ID there): the job's runtime_env and metadata, as JSON.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """True when this process is the entrypoint of a `ray job submit` job."""
    return any(os.environ.get(v) for v in (_JOB_CONFIG_ENV, "RAY_JOB_SUBMISSION_ID",
                                           "RAY_JOB_ID"))


def job_submission_id() -> str | None:
    """The submission id of the Ray job this process is the entrypoint of, e.g.
    themetune-theme7-tiny-20250101-120000 (cluster/submit.py), else None.

    RAY_JOB_SUBMISSION_ID wins (cluster/submit.py sets it); otherwise Ray's job
    supervisor passes the id in the job config's metadata."""
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        return os.environ["RAY_JOB_SUBMISSION_ID"]
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return None   # not JSON we know: no id rather than a crash of the study
    return metadata.get("job_submission_id") or None


def check_resources(infra, *, file: str = "config.yaml") -> None:
    """On a local cluster, a trial that asks for more than the machine has never starts."""
    from tuning.errors import ConfigError

    if joins_a_cluster(infra.ray):
        return  # the cluster's size is known only once connected; Ray reports it there
    cpus = infra.ray.num_cpus or os.cpu_count() or 1
    if infra.resources.cpu > cpus:
        raise ConfigError(f"a trial asks for {infra.resources.cpu:g} CPUs but this machine "
                          f"has {cpus}.", file=file, key="resources.cpu",
                          fix=f"use resources.cpu <= {cpus}, or give ray.address of a cluster.")
    if infra.resources.gpu > 0:
        gpus = infra.ray.num_gpus if infra.ray.num_gpus is not None else _local_gpus()
        if gpus < infra.resources.gpu:
            raise ConfigError(f"a trial asks for {infra.resources.gpu:g} GPU but this machine "
                              f"has {gpus}.", file=file, key="resources.gpu",
                              fix="set resources.gpu: 0 here, or give ray.address of a GPU cluster.")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def trial_resources(resources) -> dict[str, float]:
    """What Ray reserves for one trial (config.yaml resources)."""
    from tuning.trial.memory_cap import GIB

    wanted = {"cpu": resources.cpu, "gpu": resources.gpu}
    if resources.memory_gb:
        wanted["memory"] = int(resources.memory_gb * GIB)
    return wanted


def joins_a_cluster(section: RaySection) -> bool:
    """True when ensure_ray connects to an existing cluster rather than starting one."""
    return bool(section.address or os.environ.get("RAY_ADDRESS"))


def check_trial_fits(resources, *, local: bool, file: str = "config.yaml") -> None:
    """Once connected: is there a node with room for one trial's CPUs, GPUs and memory?
    On this machine's own cluster none ever will be (exit 2); a remote cluster may grow
    (an autoscaler), so there it is a warning and Tune waits."""

    import ray

    from tuning.errors import ConfigError
    from tuning.trial.memory_cap import GIB

    wanted = {"CPU": resources.cpu, "GPU": resources.gpu,
              "memory": trial_resources(resources).get("memory", 0)}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(all(n.get(k, 0) >= v for k, v in wanted.items() if v) for n in nodes):
        return
    largest = max((n.get("memory", 0) for n in nodes), default=0) / GIB
    if wanted["memory"] and all(n.get("memory", 0) < wanted["memory"] for n in nodes):
        problem = (f"a trial asks for {resources.memory_gb:g} GiB of memory but no node of "
                   f"the Ray cluster offers that much (largest: {largest:.1f} GiB)")
        fix = f"use resources.memory_gb <= {largest:.1f}, or leave it out (no cap)."
        key = "resources.memory_gb"
    else:
        problem = (f"no node of the Ray cluster has {resources.cpu:g} CPU and "
                   f"{resources.gpu:g} GPU for one trial")
        fix = "lower resources.cpu / resources.gpu, or add a bigger node."
        cpu_ok = any(n.get("CPU", 0) >= resources.cpu for n in nodes)
        key = "resources.gpu" if cpu_ok else "resources.cpu"
    if not local:
        output.log.warning("%s; Tune waits until one joins (%s)",
                                               problem, fix)
        return
    raise ConfigError(problem + ".", file=file, key=key, fix=fix)


# How long the storage probe waits for every node to answer. A node answers with a
# zero-CPU task, so busy CPUs do not delay it; a node's first task starts a worker
# process (a few seconds) and, inside a Ray job, unpacks the job's working_dir.
STORAGE_PROBE_TIMEOUT_S = 120.0


def check_storage_reachable(storage_path: str, *, file: str = "config.yaml",
                            timeout_s: float = STORAGE_PROBE_TIMEOUT_S) -> None:
    """On a cluster of more than one node, Tune's storage_path must be one storage that
    every node reaches (ray#37177: Ray no longer syncs trial folders to the head).

    A URI (s3://, gs://, ...) is taken as shared. For a local path, the driver writes a
    marker file holding a random token there, and a zero-CPU task pinned to each alive
    node must read that token back and create a file of its own beside it: a node that
    cannot has a different disk at that path (e.g. a relative path, which resolves to
    the driver's working directory, or /tmp), and trials placed there would write their
    checkpoints where the driver never looks. Call after ensure_ray() and before
    anything is recorded, so that a failure leaves nothing half-written. Raises
    StorageError (exit 2) naming config.yaml's ray.storage_path and the fix.
    """
    import ray

    from tuning.errors import StorageError

    if is_remote_storage(storage_path):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return  # one node: every trial runs beside the driver
    path = local_storage_path(storage_path)
    fix = ("set ray.storage_path to a folder that every node mounts at the same path "
           "(an NFS share, e.g. /mnt/shared/ray_results) or to cloud storage "
           "(s3://bucket/prefix, gs://bucket/prefix).")
    token = uuid.uuid4().hex
    marker = path / f".themetune-storage-probe-{token}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
    except OSError as exc:
        raise StorageError(f"ray.storage_path {storage_path!r} ({path}) cannot be written "
                           f"by the driver: {exc.strerror or exc}.", file=file,
                           key="ray.storage_path", fix=fix) from None
    try:
        problems = _probe_nodes(nodes, marker, token, timeout_s)
    finally:
        for leftover in path.glob(f"{marker.name}*"):
            leftover.unlink(missing_ok=True)
    if problems:
        where = (" (a relative path resolves against the driver's working directory, which "
                 "inside a Ray job is the job's copy of working_dir on the head node)"
                 if not Path(storage_path.removeprefix("file://")).is_absolute() else "")
        raise StorageError(
            f"ray.storage_path {storage_path!r} resolves to {path}, which is not shared by "
            f"every node of this {len(nodes)}-node Ray cluster{where}; "
            f"{len(problems)} node(s) cannot use it: {'; '.join(sorted(problems))}.",
            file=file, key="ray.storage_path", fix=fix)
    output.say(f"storage path {path} is shared by all {len(nodes)} nodes")


def _probe_nodes(nodes: list[dict], marker: Path, token: str, timeout_s: float) -> list[str]:
    """Run _probe_storage on every node; what went wrong, one line per failing node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_storage)
    refs = {
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=n["NodeID"], soft=False)).remote(str(marker), token): n
        for n in nodes}
    problems: list[str] = []
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        try:
            problem = ray.get(ref)
        except ray.exceptions.RayError as exc:
            problem = f"the probe task failed ({type(exc).__name__})"
        if problem:
            problems.append(f"{refs[ref]['NodeManagerAddress']}: {problem}")
    for ref in pending:
        ray.cancel(ref, force=True)
        problems.append(f"{refs[ref]['NodeManagerAddress']}: no answer in {timeout_s:g} s")
    return problems


def _probe_storage(marker: str, token: str) -> str | None:
    """On one node: None if the driver's marker is there and a file can be added beside
    it, else what went wrong."""
    import socket

    try:
        with open(marker) as f:
            seen = f.read()
    except FileNotFoundError:
        return "the driver's marker file is not there (a different disk at that path)"
    except OSError as exc:
        return f"cannot read the driver's marker file ({exc.strerror or exc})"
    if seen != token:
        return "the marker file there holds another token (a different disk at that path)"
    mine = f"{marker}.{socket.gethostname()}-{os.getpid()}"
    try:
        with open(mine, "w") as f:
            f.write(token)
        os.unlink(mine)
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None
