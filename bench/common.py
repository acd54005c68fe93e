"""What every benchmark shares: machine info, a table, the final JSON line, and a
throw-away workspace that wires the real parts (Django DB, MLflow store, Ray) the way
launch.py does, but in a temporary folder.

Benchmarks are not tests: they print figures. Each prints its table and, as the very
last line of stdout, one JSON object with at least `bench` and `ratio`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIGS = REPO / "configs" / "demo"


# --- reporting --------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    """CPU count, library versions, load and date: printed with every figure."""
    import torch

    info: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("torchvision", "ray", "optuna", "mlflow", "django", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def print_machine(info: dict[str, Any]) -> None:
    gpu = info["gpu"] or "none"
    print(f"machine: {info['cpus_usable']} usable CPUs ({info['cpu_model']}), "
          f"{info['memory_gib']} GiB, GPU: {gpu}; load avg {info['loadavg_at_start']}")
    print(f"versions: python {info['python']}, torch {info['torch']}, "
          f"torchvision {info['torchvision']}, ray {info['ray']}, optuna {info['optuna']}, "
          f"mlflow {info['mlflow']}; date {info['date']}")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
          ) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                               for c, w in zip(row, widths)))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("x", "").isdigit()


def emit(result: dict[str, Any]) -> None:
    """The last line of stdout: one JSON object (`bench`, `ratio`, machine, figures)."""
    sys.stdout.flush()
    sys.stderr.flush()
    print(json.dumps(result, default=_json_default), flush=True)


def _json_default(value: Any):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a smaller run that finishes in under 3 minutes on 2 CPU cores")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary workspace (MLflow store, DB, Ray results)")
    return p


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


class Stopwatch:
    """Named spans on the wall clock, in the order they were taken."""

    def __init__(self):
        self.spans: dict[str, float] = {}

    def time(self, name: str):
        watch = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                watch.spans[name] = watch.spans.get(name, 0.0) + time.perf_counter() - self.t0
                return False

        return _Span()


def process_start_time(pid: int | None = None) -> float | None:
    """Epoch seconds at which a process started (Linux /proc), e.g. a Ray worker."""
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                    .splitlines() if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


# --- the workspace: real parts in a temporary folder ------------------------------------

class Workspace:
    """A temporary folder with its own Django DB (SQLite), media root, MLflow store,
    Ray results and data cache; environment variables point the real code at it.

    Django is set up the way launch.py does it, after DATABASE_URL/MEDIA_ROOT are set."""

    def __init__(self, name: str, *, keep: bool = False):
        self.root = Path(tempfile.mkdtemp(prefix=f"themetune-bench-{name}-"))
        self.keep = keep
        self._saved_env: dict[str, str | None] = {}
        self._cwd = os.getcwd()

    def __enter__(self) -> "Workspace":
        env = {
            "DATABASE_URL": f"sqlite:///{self.root / 'db.sqlite3'}",
            "MEDIA_ROOT": str(self.root / "media"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.root / 'mlflow.db'}",
            "DJANGO_SETTINGS_MODULE": "web.settings",
        }
        for key, value in env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._saved_env["MLFLOW_RUN_ID"] = os.environ.pop("MLFLOW_RUN_ID", None)
        # MLflow writes artifacts under ./mlruns for a sqlite store: keep them in here.
        os.chdir(self.root)
        return self

    def __exit__(self, *exc) -> None:
        os.chdir(self._cwd)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if self.keep:
            print(f"workspace kept: {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def mlflow_uri(self) -> str:
        return os.environ["MLFLOW_TRACKING_URI"]

    def setup_django(self) -> None:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)

    def warm_mlflow(self) -> float:
        """Create the MLflow store (its schema migrations take seconds on first use) so
        that a timed study does not pay for them; returns the seconds it took."""
        from mlflow.tracking import MlflowClient

        t0 = time.perf_counter()
        MlflowClient(self.mlflow_uri).search_experiments()
        return time.perf_counter() - t0

    def demo_theme(self):
        """The demo theme (sklearn digits, 1,797 8x8 PNGs) imported into this DB and read
        back through the selector, exactly as launch.py reads a theme."""
        from data_access import selectors, services

        theme_id = services.theme_import_demo(name="digits_demo").id
        return selectors.theme_get_spec(theme_id=theme_id)

    def configs(self, *, optuna_params: dict | None = None, params: dict | None = None,
                config: dict | None = None, augments: dict | None = None,
                name: str = "configs") -> Path:
        """configs/demo with overrides merged in, written to a folder of this workspace.

        Ray results and the data cache always go into the workspace."""
        from tuning.config.params import deep_merge

        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        overrides = {
            "optuna_params.yaml": optuna_params or {},
            "params.yaml": params or {},
            "config.yaml": deep_merge({"ray": {"storage_path": str(self.root / "ray_results")},
                                       "cache_dir": str(self.root / "cache")}, config or {}),
            "augments.yaml": augments or {},
        }
        for file, override in overrides.items():
            base = yaml.safe_load((DEMO_CONFIGS / file).read_text()) or {}
            merged = deep_merge(base, override)
            # Lists and whole sections replaced wholesale where the caller says so.
            if file == "optuna_params.yaml" and "params_to_tune" in override:
                merged["params_to_tune"] = override["params_to_tune"]
            (folder / file).write_text(yaml.safe_dump(merged, sort_keys=False))
        return folder

    def load_config(self, folder: Path, *, theme_id: int, **overrides):
        from tuning.config import ConfigFiles, Overrides, load_study_config

        return load_study_config(ConfigFiles.in_folder(folder),
                                 Overrides(theme_id=theme_id, **overrides))


def start_ray(config) -> float:
    """Start Ray as launch.py does (tuning.cluster.ensure_ray: a new local cluster unless
    ray.address or RAY_ADDRESS names one); returns the seconds it took, which a study run
    then does not pay again."""
    from tuning.cluster import ensure_ray

    t0 = time.perf_counter()
    ensure_ray(config.infra.ray)
    return time.perf_counter() - t0


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def quiet_logs() -> None:
    """Keep library chatter off stdout so that the table and JSON line stay readable."""
    import logging
    import warnings

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "alembic", "optuna", "themetune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    except ImportError:
        pass


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each variant `repeats` times, alternating (ABAB...), so that the load that
    other processes put on a shared machine hits all variants alike."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(repeats):
        # Reverse every other round (ABBA): neither variant always runs first.
        for name in (order if r % 2 == 0 else order[::-1]):
            results[name].append(variants[name]())
    return results
