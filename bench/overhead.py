"""The service's overhead around trials, against bare Ray Tune and the minimum.

Many short trials of fixed work go through the whole pipeline (run_study: Ray Tune,
StudySearch/OptunaSearch, MLflow parent and child runs, trial models logged, the Django
DB recorder), and through bare Ray Tune.

    python -m bench.overhead [--quick] [--sizes 16,64] [--repeats 2] [--busy]

Variants, on one local Ray cluster started before the clock runs (as is the MLflow
store), interleaved and repeated (A B at the small size, B A at the large one, ...):
  service    run_study with configs/demo as shipped: log_models all, a checkpoint each
             epoch (the trial below), checkpoint.num_to_keep, reuse_actors=True
  bare tune  the same trial function through a plain ray.tune.Tuner with
             reuse_actors=True and Tune's defaults otherwise (random configs, its file
             loggers, all checkpoints kept; no searcher, MLflow, DB or callbacks of ours)

Each runs at two study sizes. Figures (last line, JSON):
  ratio              service wall / (trials x reports x work / concurrency), larger size;
                     target <= 1.10 (Ray's own release tests accept 1.2)
  vs_bare_tune       steady state, larger size: seconds per trial between trial
                     completions after the first quarter, service / bare Tune; <= 1.05
                     (models still queued at the last completion count in the end steps;
                     the table also shows wall per extra trial between the two sizes)
  trial_cost_growth  driver time per trial (callback hooks incl. DB writes, searcher
                     hooks, Tune's experiment snapshots), larger / smaller size; <= 1.05
  first_result_s     study start (run_study called) -> the first trial's first report

The trial replaces train_trial (run_study(trainable=...)): it sleeps (or, with --busy,
spins) `work` seconds per report, reports the real metric names, and writes a real
ResNet18 checkpoint (pre-serialized bytes) with every report, as train_trial does each
epoch, because the study logs each trial's model from its checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from functools import wraps
from pathlib import Path
from typing import Any

from bench.common import (
    Workspace,
    emit,
    machine_info,
    median,
    parser,
    print_machine,
    process_start_time,
    quiet_logs,
    start_ray,
    stop_ray,
    table,
)

TARGET = 1.10
NO_MODELS = "service-no-models"


# --- the trial of fixed work ------------------------------------------------------------

def make_fixed_work_trial(*, reports: int, work_s: float, busy: bool, checkpoint_every: bool,
                          checkpoint_ref):
    """A stand-in for train_trial with the same signature and reports."""

    def fixed_work_trial(config: dict[str, Any], *, data, settings) -> None:
        import ray
        from ray import tune

        entered = time.time()
        pid = os.getpid()
        started = process_start_time()
        payload = None
        for epoch in range(1, reports + 1):
            if busy:
                end = time.perf_counter() + work_s
                while time.perf_counter() < end:
                    pass
            else:
                time.sleep(work_s)
            acc = 0.5 + 0.4 * (hash(str(sorted(config.items()))) % 1000) / 1000
            metrics = {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": acc,
                       "valid_loss": 1.0 / epoch, "valid_acc": acc,
                       "bench_fn_entered": entered, "bench_proc_started": started,
                       "bench_pid": pid, "bench_reported": time.time()}
            last = epoch == reports
            if last:
                metrics["test_loss"], metrics["test_acc"] = 1.0 / epoch, acc
            if last or checkpoint_every:
                if payload is None:
                    payload = ray.get(checkpoint_ref)
                with tempfile.TemporaryDirectory() as folder:
                    Path(folder, "checkpoint.pt").write_bytes(payload)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)

    fixed_work_trial.__name__ = "fixed_work_trial"
    fixed_work_trial.__qualname__ = "fixed_work_trial"
    return fixed_work_trial


def cold_import_seconds() -> float:
    """What a fresh trial process pays to import what a trial needs."""
    import subprocess
    import sys

    from bench.common import REPO

    code = ("import time; t = time.perf_counter(); import torch, torchvision, ray.tune; "
            "import tuning.trial.trainable; print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def checkpoint_bytes(plan) -> bytes:
    """A real checkpoint of the study's model, in train_trial's format."""
    import torch

    from tuning.trial.model import build_model

    params = plan.config.params
    model = build_model(params.model.name, num_classes=plan.theme.num_classes,
                        in_channels=params.data.channels)
    buffer = io.BytesIO()
    # With the normalization statistics, as train_trial saves them: without, logging the
    # model would recompute them over the training split.
    channels = params.data.channels
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": params.training.num_epochs,
                "mean": [0.5] * channels, "std": [0.25] * channels}, buffer)
    return buffer.getvalue()


# --- instrumentation (this process only; nothing in tuning/ is changed) -----------------

class Timeline:
    """Driver-side timestamps of one study run and the time spent in its hooks."""

    def __init__(self):
        self.fit_called = self.fit_returned = self.setup = None
        self.trial_start: dict[str, float] = {}
        self.trial_first_result: dict[str, float] = {}
        self.trial_complete: dict[str, float] = {}
        self.worker: dict[str, dict[str, Any]] = {}           # first result's bench_* keys
        self.results: list[tuple[float, str, dict[str, Any]]] = []  # (time, trial, result)
        self.hook_s: dict[str, float] = {}                    # StudyCallback hook -> seconds
        self.reuse_actors: bool | None = None                 # as the Tuner got it
        self.recorder_s = 0.0
        self.snapshot_s = 0.0          # Tune's experiment-state snapshots (driver loop)
        self.snapshots = 0
        self.searcher_s = 0.0          # StudySearch result/complete hooks
        self.model_log_s = 0.0         # trial models logged (in on_trial_complete)


def timing_callback_class():
    from ray import tune

    class TimingCallback(tune.Callback):
        def __init__(self, timeline: Timeline):
            self.timeline = timeline

        def setup(self, **info):
            self.timeline.setup = time.time()

        def on_trial_start(self, iteration, trials, trial, **info):
            self.timeline.trial_start.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            t = self.timeline
            t.results.append((time.time(), trial.trial_id,
                              {k: result.get(k) for k in ("epoch", "valid_acc", "test_acc",
                                                          "bench_reported", "bench_pid")}))
            if trial.trial_id not in t.trial_first_result:
                t.trial_first_result[trial.trial_id] = time.time()
                t.worker[trial.trial_id] = {k: v for k, v in result.items()
                                            if k.startswith("bench_")}

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.timeline.trial_complete[trial.trial_id] = time.time()

    return TimingCallback


class TimedRecorder:
    """Wraps a StudyRecorder and adds up the seconds its writes take: every method of
    the recorder, so that one added to StudyRecorder is timed too."""

    def __init__(self, inner, timeline: Timeline):
        self._inner = inner
        self._timeline = timeline

    def __getattr__(self, name: str):
        method = getattr(self._inner, name)
        if not name.startswith(("study_", "trial_")) or not callable(method):
            return method   # e.g. the Django recorder's study_id

        def timed(event) -> None:
            t0 = time.perf_counter()
            try:
                method(event)
            finally:
                self._timeline.recorder_s += time.perf_counter() - t0
        return timed


@contextlib.contextmanager
def instrumented(timeline: Timeline, *, reuse_actors: bool | None):
    """Patch, for the duration of one study: Tuner.fit (timed), TuneConfig (reuse_actors
    recorded, forced when not None), RunConfig (a timing callback added), the
    StudyCallback hooks and the driver's other costs (_extra_patches, timed)."""
    patches = _config_patches(timeline, reuse_actors) + _hook_patches(timeline) \
        + _extra_patches(timeline)
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    for owner, name, new in patches:
        setattr(owner, name, new)
    try:
        yield
    finally:
        for owner, name, old in reversed(saved):
            setattr(owner, name, old)


def _config_patches(timeline: Timeline, reuse_actors: bool | None) -> list:
    import ray.tune as tune

    orig_fit, orig_tune_config, orig_run_config = tune.Tuner.fit, tune.TuneConfig, \
        tune.RunConfig
    timing_cb = timing_callback_class()(timeline)

    @wraps(orig_fit)
    def fit(self, *args, **kwargs):
        timeline.fit_called = time.time()
        try:
            return orig_fit(self, *args, **kwargs)
        finally:
            timeline.fit_returned = time.time()

    # Subclasses, not functions: Tuner checks isinstance(run_config, tune.RunConfig).
    class TuneConfig(orig_tune_config):
        def __init__(self, *args, **kwargs):
            if reuse_actors is not None:
                kwargs["reuse_actors"] = reuse_actors
            super().__init__(*args, **kwargs)
            timeline.reuse_actors = self.reuse_actors

    class RunConfig(orig_run_config):
        def __init__(self, *args, **kwargs):
            kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [timing_cb]
            super().__init__(*args, **kwargs)

    return [(tune.Tuner, "fit", fit), (tune, "TuneConfig", TuneConfig),
            (tune, "RunConfig", RunConfig)]


def _hook_patches(timeline: Timeline) -> list:
    from tuning.tracking.callbacks import StudyCallback

    def timed_hook(name, method):
        @wraps(method)
        def hook(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                timeline.hook_s[name] = timeline.hook_s.get(name, 0.0) + time.perf_counter() - t0
        return hook

    hooks = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error",
             "on_step_end")
    return [(StudyCallback, name, timed_hook(name, StudyCallback.__dict__[name]))
            for name in hooks]


def _extra_patches(timeline: Timeline) -> list[tuple[Any, str, Any]]:
    """(owner, name, timed function) for the driver's costs outside the callback hooks:
    Tune's experiment snapshots, the searcher's hooks, model logging."""
    from ray.tune.execution.tune_controller import TuneController

    from tuning.optuna_adapter import StudySearch
    from tuning.tracking.models_io import ModelLogger

    def timed(method, field: str, count: str | None = None):
        @wraps(method)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(timeline, field, getattr(timeline, field) + time.perf_counter() - t0)
                if count:
                    setattr(timeline, count, getattr(timeline, count) + 1)
        return run

    return [(TuneController, "checkpoint",
             timed(TuneController.checkpoint, "snapshot_s", "snapshots")),
            (StudySearch, "on_trial_result", timed(StudySearch.on_trial_result, "searcher_s")),
            (StudySearch, "on_trial_complete",
             timed(StudySearch.on_trial_complete, "searcher_s")),
            (ModelLogger, "log_trial_model",
             timed(ModelLogger.log_trial_model, "model_log_s"))]


# --- the runs ---------------------------------------------------------------------------

def run_service(plan, trainable, *, reuse_actors: bool | None) -> dict[str, Any]:
    from data_access.recorder import DjangoStudyRecorder
    from tuning.study import run_study
    from tuning.tracking.progress import ProgressDisplay

    timeline = Timeline()
    recorder = TimedRecorder(DjangoStudyRecorder(), timeline)
    captured = io.StringIO()
    with instrumented(timeline, reuse_actors=reuse_actors):
        t0 = time.time()
        try:
            with contextlib.redirect_stdout(captured):
                outcome = run_study(plan, recorder=recorder, trainable=trainable,
                                    progress=ProgressDisplay(min_interval_s=3600))
        except BaseException:
            print(captured.getvalue()[-4000:])
            raise
        t1 = time.time()
    return {"t0": t0, "t1": t1, "timeline": timeline, "counts": outcome.counts,
            "best_value": outcome.best_value, "outcome": outcome,
            "disk": study_disk(plan, outcome, since=t0)}


def study_disk(plan, outcome, *, since: float) -> dict[str, int]:
    """What a finished study leaves on disk: the Tune checkpoints in its experiment
    folder (the newest under ray.storage_path) and the models it logged to MLflow."""
    from mlflow.tracking import MlflowClient

    storage = Path(plan.config.infra.ray.storage_path)
    experiment = max((p for p in storage.iterdir() if p.is_dir()
                      and p.name.startswith(plan.study_name)), key=lambda p: p.stat().st_mtime)
    checkpoints = [p for p in experiment.glob("*/checkpoint_*") if p.is_dir()]
    models = [m for m in MlflowClient().search_logged_models(
        experiment_ids=[outcome.experiment_id]) if m.creation_timestamp >= since * 1000]
    return {"checkpoints_kept": len(checkpoints),
            "checkpoint_bytes": sum(_folder_bytes(p) for p in checkpoints),
            "models_logged": len(models),
            "model_bytes": sum(_folder_bytes(Path(m.artifact_location.removeprefix("file://")))
                               for m in models)}


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_bare_tune(plan, trainable) -> dict[str, Any]:
    """The same trials through plain Ray Tune as its docs set it up for many short trials
    (reused actors), with its own defaults otherwise: random configs, no searcher,
    scheduler or callbacks of ours, Tune's file loggers, all checkpoints kept."""
    from ray import tune

    from tuning.trial.trainable import TrialSettings

    config = plan.config
    settings = TrialSettings(base=config.base, augments=None, num_classes=plan.theme.num_classes,
                             in_channels=config.params.data.channels, cpus=1)
    timeline = Timeline()
    timing_cb = timing_callback_class()(timeline)
    space = {"training.learning_rate": tune.loguniform(1e-4, 1e-2)}
    t0 = time.time()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(trainable, data=plan.data, settings=settings),
                            {"cpu": config.infra.resources.cpu}),
        param_space=space,
        tune_config=tune.TuneConfig(num_samples=config.study.n_trials,
                                    max_concurrent_trials=config.infra.max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=f"bare-{time.strftime('%H%M%S')}-{os.getpid()}",
                                  verbose=0, storage_path=config.infra.ray.storage_path,
                                  callbacks=[timing_cb]))
    timeline.reuse_actors = True
    extra = _extra_patches(timeline)
    for owner, name, patched in extra:
        setattr(owner, name, patched)
    timeline.fit_called = time.time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            tuner.fit()
    finally:
        for owner, name, patched in extra:
            setattr(owner, name, patched.__wrapped__)  # functools.wraps keeps the original
    timeline.fit_returned = t1 = time.time()
    return {"t0": t0, "t1": t1, "timeline": timeline, "counts": None, "best_value": None}


def summarize(name: str, run: dict[str, Any], *, n_trials: int, work_total: float,
              concurrency: int) -> dict[str, Any]:
    t: Timeline = run["timeline"]
    wall = run["t1"] - run["t0"]
    minimum = work_total / concurrency
    # on_step_end runs on every turn of Tune's loop, start-up included: per trial, it
    # would only show how long the study ran.
    hooks = sum(v for k, v in t.hook_s.items() if k != "on_step_end")
    driver = hooks + t.snapshot_s + t.searcher_s
    first = min((r[0] for r in t.results), default=None)
    done = sorted(t.trial_complete.values())
    # Steady state within the run: completions after the first quarter of trials, so
    # that neither the actors' start nor a slow first trial is in it.
    q = len(done) // 4
    steady = (done[-1] - done[q]) / (len(done) - 1 - q) if len(done) - 1 > q else None
    return {
        "variant": name, "trials": n_trials, "reuse_actors": t.reuse_actors,
        "wall_s": wall, "min_s": minimum, "ratio": wall / minimum,
        "first_result_s": _delta(run["t0"], first),
        "steady_per_trial_s": steady,
        "pre_fit_s": _delta(run["t0"], t.fit_called),
        "post_fit_s": _delta(t.fit_returned, run["t1"]),
        "worker_processes": len({w.get("bench_pid") for w in t.worker.values()}),
        "trials_seen": len(t.worker), "counts": run["counts"],
        "driver_per_trial_ms": 1000 * driver / n_trials,
        "hooks_per_trial_ms": 1000 * hooks / n_trials,
        "db_writes_per_trial_ms": 1000 * t.recorder_s / n_trials,
        "snapshot_per_trial_ms": 1000 * t.snapshot_s / n_trials,
        "snapshots": t.snapshots,
        "searcher_per_trial_ms": 1000 * t.searcher_s / n_trials,
        "model_log_per_trial_ms": 1000 * t.model_log_s / n_trials,
        "hook_s": {k: round(v, 3) for k, v in t.hook_s.items()},
        **_disk_figures(run.get("disk"), n_trials),
        "per_trial_median_s": trial_lifecycle(t),
    }


def _disk_figures(disk: dict[str, int] | None, n_trials: int) -> dict[str, Any]:
    if disk is None:   # bare Tune: its checkpoints are its own business
        return {}
    return {"checkpoints_kept": disk["checkpoints_kept"], "models_logged": disk["models_logged"],
            "disk_per_trial_mb": (disk["checkpoint_bytes"] + disk["model_bytes"])
            / n_trials / 2**20,
            "checkpoint_mb": disk["checkpoint_bytes"] / 2**20}


def trial_lifecycle(t: Timeline) -> dict[str, float | None]:
    """Medians over trials of where a trial's time goes, from driver and worker clocks."""
    by_trial: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    for received, trial_id, r in t.results:
        by_trial.setdefault(trial_id, []).append((received, r))
    start_to_fn, latency, round_trip, last_to_complete, gap = [], [], [], [], []
    last_latency = []
    ends_by_pid: dict[Any, list[float]] = {}
    for trial_id, results in by_trial.items():
        w = t.worker.get(trial_id, {})
        start = t.trial_start.get(trial_id)
        if start and w.get("bench_fn_entered"):
            start_to_fn.append(w["bench_fn_entered"] - start)
        sent = [r["bench_reported"] for _, r in results if r.get("bench_reported")]
        for received, r in results[:-1]:
            if r.get("bench_reported"):
                latency.append(received - r["bench_reported"])
        if results and results[-1][1].get("bench_reported"):
            last_latency.append(results[-1][0] - results[-1][1]["bench_reported"])
        steps = [b - a for a, b in zip(sent, sent[1:])]
        round_trip.extend(steps)
        done = t.trial_complete.get(trial_id)
        if done:
            last_to_complete.append(done - results[-1][0])
            ends_by_pid.setdefault(w.get("bench_pid"), []).append(done)
    # The next trial on the same worker process (reused actors only).
    starts_by_pid: dict[Any, list[float]] = {}
    for trial_id, start in t.trial_start.items():
        starts_by_pid.setdefault(t.worker.get(trial_id, {}).get("bench_pid"), []).append(start)
    for pid, ends in ends_by_pid.items():
        starts = sorted(starts_by_pid.get(pid, []))
        for end in ends:
            later = [s for s in starts if s > end]
            if later:
                gap.append(later[0] - end)
    return {"trial start (driver) -> function entered": median(start_to_fn),
            "report -> driver callback (not last)": median(latency),
            "report to report (incl. work)": median(round_trip),
            "last report (checkpoint written + persisted) -> driver": median(last_latency),
            "last result -> trial complete (driver)": median(last_to_complete),
            "trial complete -> next trial start, same process": median(gap)}


def _delta(a, b):
    return (b - a) if a is not None and b is not None else None


def parse_args(argv: list[str] | None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", help="two study sizes, e.g. 16,64 (quick: 8,32)")
    p.add_argument("--repeats", type=int, help="rounds of every variant and size (2; quick: 1)")
    p.add_argument("--reports", type=int, default=3, help="reports per trial (3)")
    p.add_argument("--work", type=float,
                   help="seconds of work per report (0.5; quick: 0.05)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (2)")
    p.add_argument("--busy", action="store_true", help="spin the CPU instead of sleeping")
    p.add_argument("--checkpoint", choices=("last", "every"), default="every",
                   help="which reports carry a checkpoint (every: as train_trial does)")
    p.add_argument("--tune-loggers", action="store_true",
                   help="diagnosis: the service with Tune's default file loggers, as before "
                        "tuning.tracking.callbacks.file_loggers")
    p.add_argument("--variants", default="service,bare tune",
                   help="comma-separated subset of: service, bare tune, and "
                        f"{NO_MODELS!r} (diagnosis: log_models none)")
    args = p.parse_args(argv)
    args.sizes = [int(v) for v in (args.sizes or ("8,32" if args.quick else "16,64")).split(",")]
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.work = args.work if args.work is not None else (0.05 if args.quick else 0.5)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def prepare(ws: Workspace, args, setup: dict[str, float]) -> dict[int, Any]:
    """One plan per study size, from configs/demo as shipped (log_models all, a
    checkpoint each epoch, checkpoint.num_to_keep) but for the trial count and work."""
    from tuning.study import prepare_study

    t0 = time.perf_counter()
    ws.setup_django()
    setup["django setup + migrate"] = time.perf_counter() - t0
    setup["MLflow store created (first use)"] = ws.warm_mlflow()
    theme = ws.demo_theme()
    plans = {}
    models = ["shipped"] + (["none"] if NO_MODELS in args.variants else [])
    for n, log_models in ((n, m) for n in args.sizes for m in models):
        shipped = log_models == "shipped"
        folder = ws.configs(
            name=f"configs-{n}-{log_models}",
            optuna_params={"study": {"n_trials": n},
                           "base_params": {"training": {"num_epochs": args.reports}}},
            config={"max_concurrent_trials": args.concurrency,
                    "ray": {"num_cpus": args.concurrency}, "resources": {"cpu": 1, "gpu": 0},
                    "scheduler": {"type": "none"},
                    **({} if shipped else {"mlflow": {"log_models": "none"}})})
        config = ws.load_config(folder, theme_id=theme.id)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            plans[n, log_models] = prepare_study(config, theme)
        setup[f"prepare_study, {n} trials, models {log_models}"] = time.perf_counter() - t0
    return plans


def run_rounds(plans, trainable, args) -> list[dict[str, Any]]:
    """Every variant at every size, `repeats` times, interleaved: A B, then B A, ..."""
    results = []
    step = 0
    for r in range(args.repeats):
        for n in args.sizes:
            order = args.variants if step % 2 == 0 else args.variants[::-1]
            step += 1
            for variant in order:
                plan = plans[n, "none" if variant == NO_MODELS else "shipped"]
                run = (run_bare_tune(plan, trainable) if variant == "bare tune"
                       else run_service(plan, trainable, reuse_actors=None))
                s = summarize(variant, run, n_trials=n,
                              work_total=n * args.reports * args.work,
                              concurrency=args.concurrency)
                s["round"] = r + 1
                results.append(s)
                print(f"  round {r + 1}, {n} trials, {variant}: {s['wall_s']:.1f} s, "
                      f"ratio {s['ratio']:.3f}, driver {s['driver_per_trial_ms']:.0f} ms/trial",
                      flush=True)
    return results


def medians(results, variant: str, n: int) -> dict[str, Any]:
    runs = [s for s in results if s["variant"] == variant and s["trials"] == n]
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k not in ("trials", "round")]
    out = {k: median([s[k] for s in runs if s[k] is not None]) for k in keys}
    out.update(variant=variant, trials=n, runs=len(runs),
               reuse_actors=runs[0]["reuse_actors"])
    return out


def steady_state(results, variant: str, sizes: list[int], per_trial_work: float
                 ) -> dict[str, float]:
    """Wall time per extra trial between the two sizes (start-up and the end steps
    cancel out), and start-up as what the small study took beyond its trials."""
    small, large = (medians(results, variant, n) for n in sizes)
    per_trial = (large["wall_s"] - small["wall_s"]) / (sizes[1] - sizes[0])
    return {"per_trial_s": per_trial, "overhead_per_trial_s": per_trial - per_trial_work,
            "startup_and_end_s": small["wall_s"] - sizes[0] * per_trial}


NOT_MEASURED = (
    "Not measured: real training (the trial sleeps; --busy spins one core), data loading "
    "and fresh-actor start (reused actors on both sides: see bench.data), GPU placement, "
    "remote storage or a remote MLflow/DB server (all local files here), ASHA pruning, "
    "retries and resume. 'driver' is time on Tune's event loop (callback hooks incl. DB "
    "writes and the trial models logged in on_trial_complete, searcher hooks, experiment "
    "snapshots); 'model log' is the models' part of it, shown apart.")


def report(results, args, setup, info) -> dict[str, Any]:
    print()
    print(table(["setup (not in the ratios)", "s"], [[k, v] for k, v in setup.items()]))
    heads = ["variant", "trials", "wall s", "min s", "ratio", "1st result s", "steady s/trial",
             "driver ms/trial",
             "hooks", "DB", "snapshots", "snap ms/trial", "searcher", "model log ms/trial"]
    rows = []
    for n in args.sizes:
        for v in args.variants:
            m = medians(results, v, n)
            rows.append([v, n, m["wall_s"], m["min_s"], m["ratio"], m["first_result_s"],
                         m["steady_per_trial_s"],
                         m["driver_per_trial_ms"], m["hooks_per_trial_ms"],
                         m["db_writes_per_trial_ms"], m["snapshots"],
                         m["snapshot_per_trial_ms"], m["searcher_per_trial_ms"],
                         m["model_log_per_trial_ms"]])
    print()
    print(table(heads, rows, title=f"medians of {args.repeats} round(s); min = trials x "
                                   f"reports x work / concurrency; ms are per trial"))
    per_trial_work = args.reports * args.work / args.concurrency
    steady = {v: steady_state(results, v, args.sizes, per_trial_work) for v in args.variants}
    print()
    print(table(["variant", "s per extra trial", "beyond work", "start-up + end s (rest)"],
                [[v, d["per_trial_s"], d["overhead_per_trial_s"], d["startup_and_end_s"]]
                 for v, d in steady.items()],
                title=f"steady state between {args.sizes[0]} and {args.sizes[1]} trials "
                      f"(work per trial slot: {per_trial_work:.3f} s)"))
    large = [s for s in results if s["trials"] == args.sizes[1]]
    print()
    life = [[k] + [medians_of(large, v, k) for v in args.variants]
            for k in large[0]["per_trial_median_s"]]
    print(table(["per trial (median s), large study"] + args.variants, life))
    print()
    print(table(["variant", "trials", "checkpoints kept", "checkpoints MB", "models logged",
                 "disk MB per trial"],
                [[s["variant"], s["trials"], s["checkpoints_kept"], s["checkpoint_mb"],
                  s["models_logged"], s["disk_per_trial_mb"]]
                 for s in results if "checkpoints_kept" in s],
                title="what each finished study keeps (checkpoints and logged models)"))
    print()
    print(NOT_MEASURED)
    return figures(results, args, steady, info, setup)


def medians_of(runs, variant: str, key: str):
    return median([s["per_trial_median_s"][key] for s in runs if s["variant"] == variant
                   and s["per_trial_median_s"][key] is not None])


def figures(results, args, steady, info, setup) -> dict[str, Any]:
    small, large = (medians(results, "service", n) for n in args.sizes)
    # Per trial between completions within each run of the larger study (medians): a
    # slow start of one run, frequent on a shared machine, does not enter it.
    bare = medians(results, "bare tune", args.sizes[1]) if "bare tune" in steady else None
    vs_bare = large["steady_per_trial_s"] / bare["steady_per_trial_s"] if bare else None
    growth = large["driver_per_trial_ms"] / small["driver_per_trial_ms"]
    first = median([s["first_result_s"] for s in results if s["variant"] == "service"])
    kept = max(s["checkpoints_kept"] for s in results if s["variant"] == "service")
    verdict = {"ratio <= 1.10": large["ratio"] <= TARGET,
               "vs_bare_tune <= 1.05": vs_bare is not None and vs_bare <= 1.05,
               "trial_cost_growth <= 1.05": growth <= 1.05,
               "driver_per_trial_s <= 0.2": large["driver_per_trial_ms"] <= 200,
               "checkpoints_kept <= 1": kept <= 1}
    print(f"ratio (service, {args.sizes[1]} trials) {large['ratio']:.3f}; vs bare Tune "
          f"(steady state) {vs_bare if vs_bare is None else round(vs_bare, 3)}; "
          f"trial_cost_growth {growth:.3f}; first result {first:.2f} s; targets: {verdict}")
    return {"bench": "overhead", "ratio": round(large["ratio"], 4), "target": TARGET,
            "met": all(verdict.values()), "targets_met": verdict,
            "ratio_meaning": "run_study wall / (trials x reports x work / concurrency), "
                             "larger study",
            "vs_bare_tune": round(vs_bare, 4) if vs_bare else None,
            "vs_bare_tune_meaning": "steady state, larger study: s per trial between "
                                    "completions after the first quarter, service / bare "
                                    "Tune with reuse_actors=True",
            "trial_cost_growth": round(growth, 4),
            "driver_per_trial_s": round(large["driver_per_trial_ms"] / 1000, 4),
            "checkpoints_kept": kept,
            "disk_per_trial_mb": round(large["disk_per_trial_mb"], 2),
            "trial_cost_growth_meaning": "driver ms per trial, larger / smaller study",
            "first_result_s": round(first, 3),
            "steady_state": steady, "quick": args.quick, "sizes": args.sizes,
            "repeats": args.repeats, "reports": args.reports, "work_s": args.work,
            "concurrency": args.concurrency, "busy": args.busy, "checkpoint": args.checkpoint,
            "setup_s": {k: round(v, 3) for k, v in setup.items()},
            "runs": results, "machine": info}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    info = machine_info()
    print(f"bench.overhead: {args.sizes} trials x {args.reports} reports x {args.work} s "
          f"{'busy' if args.busy else 'sleep'}, {args.concurrency} at once; variants "
          f"{args.variants}, {args.repeats} round(s), interleaved")
    print_machine(info)
    setup: dict[str, float] = {}
    with Workspace("overhead", keep=args.keep) as ws:
        plans = prepare(ws, args, setup)
        first = plans[args.sizes[0], "shipped"]
        setup["ray.init (local cluster start)"] = start_ray(first.config)
        if not args.quick:
            setup["imports of a trial in a new process (torch, tuning.trial.trainable)"] = \
                cold_import_seconds()
        if args.tune_loggers:
            import tuning.tracking.callbacks as callbacks
            callbacks.file_loggers = lambda: []
        import ray

        trainable = make_fixed_work_trial(
            reports=args.reports, work_s=args.work, busy=args.busy,
            checkpoint_every=args.checkpoint == "every",
            checkpoint_ref=ray.put(checkpoint_bytes(first)))
        try:
            results = run_rounds(plans, trainable, args)
        finally:
            stop_ray()
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    emit(report(results, args, setup, info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
