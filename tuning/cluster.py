"""Connecting the driver to Ray: a local one-node cluster, or an existing cluster."""

from __future__ import annotations

import os
from pathlib import Path

from tuning.infra import RaySection

PACKAGE_DIR = Path(__file__).resolve().parent


def ensure_ray(section: RaySection) -> None:
    import ray

    if ray.is_initialized():
        return
    # Inside `ray job submit`, RAY_ADDRESS points at the cluster that runs the job.
    address = section.address or os.environ.get("RAY_ADDRESS")
    if address:
        # Inside a Ray job the job's working_dir already carries the code; a driver
        # that joins a cluster by itself ships the tuning package to the workers.
        in_job = bool(os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_JOB_ID"))
        runtime_env = None if in_job else {"py_modules": [str(PACKAGE_DIR)]}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        return
    # Local workers start in Ray's session folder: point them at this checkout.
    pythonpath = os.pathsep.join(p for p in (str(PACKAGE_DIR.parent),
                                             os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=section.num_cpus, num_gpus=section.num_gpus,
             include_dashboard=True, dashboard_host=section.dashboard_host,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, log_to_driver=False)


def check_resources(infra, *, file: str = "config.yaml") -> None:
    """On a local cluster, a trial that asks for more than the machine has never starts."""
    from tuning.errors import ConfigError

    if infra.ray.address or os.environ.get("RAY_ADDRESS"):
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
