"""The service's overhead around trials: many short trials of fixed work through the
whole pipeline (run_study: Ray Tune, StudySearch/OptunaSearch, MLflow parent and child
runs, the Django DB recorder), against the theoretical minimum.

    python -m bench.overhead [--quick] [--busy] [--checkpoint last|every]

Ratio = wall time of run_study / (total trial work / concurrency); target <= 1.10 (Ray's
own release tests accept 1.2). The local Ray cluster is started before the clock runs
(on a cluster it is already up; its start is reported on its own), and so is the MLflow
store (its schema migrations run once per store, not per study).

Variants, run one after the other in this process on the same Ray cluster (quick: the
first two):
  service        run_study as it is in tuning/study.py (reuse_actors=False when written)
  service+reuse  the same with reuse_actors=True, patched in here only to measure it
  bare tune      the same trials through a plain ray.tune.Tuner (no searcher, no
                 MLflow, no DB, no callbacks, fresh actors): what Ray alone costs

The trial replaces train_trial (run_study(trainable=...)): it sleeps (or, with --busy,
spins) `work` seconds per report and reports the real metric names; its last report
carries a real ResNet18 checkpoint (pre-serialized bytes, written to a file), because
the study logs the best trial's model from its checkpoint at the end.
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

from bench.common import (Workspace, emit, machine_info, median, parser, print_machine,
                          process_start_time, quiet_logs, start_ray, stop_ray, table)

TARGET = 1.10


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
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": params.training.num_epochs},
               buffer)
    return buffer.getvalue()


# --- instrumentation (this process only; nothing in tuning/ is changed) -----------------

class Timeline:
    """Driver-side timestamps of one study run and the time spent in its hooks."""

    def __init__(self):
        self.fit_called = self.fit_returned = self.setup = None
        self.suggest: list[tuple[float, float]] = []          # (start, end)
        self.trial_start: dict[str, float] = {}
        self.trial_first_result: dict[str, float] = {}
        self.trial_complete: dict[str, float] = {}
        self.worker: dict[str, dict[str, Any]] = {}           # first result's bench_* keys
        self.results: list[tuple[float, str, dict[str, Any]]] = []  # (time, trial, result)
        self.hook_s: dict[str, float] = {}                    # StudyCallback hook -> seconds
        self.reuse_actors: bool | None = None                 # as the Tuner got it
        self.recorder_s = 0.0


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
    """Wraps a StudyRecorder and adds up the seconds its writes take."""

    def __init__(self, inner, timeline: Timeline):
        self._inner = inner
        self._timeline = timeline

    def _timed(self, method, event) -> None:
        t0 = time.perf_counter()
        try:
            method(event)
        finally:
            self._timeline.recorder_s += time.perf_counter() - t0

    def study_started(self, event): self._timed(self._inner.study_started, event)
    def trial_started(self, event): self._timed(self._inner.trial_started, event)
    def trial_result(self, event): self._timed(self._inner.trial_result, event)
    def trial_finished(self, event): self._timed(self._inner.trial_finished, event)
    def study_finished(self, event): self._timed(self._inner.study_finished, event)


@contextlib.contextmanager
def instrumented(timeline: Timeline, *, reuse_actors: bool | None):
    """Patch, for the duration of one study: Tuner.fit (timed), TuneConfig (reuse_actors
    forced when not None), RunConfig (a timing callback added), StudySearch.suggest and
    the StudyCallback hooks (timed)."""
    from ray import tune

    from tuning.tracking.callbacks import StudyCallback
    from tuning.optuna_adapter import StudySearch

    saved = {"Tuner.fit": tune.Tuner.fit, "TuneConfig": tune.TuneConfig,
             "RunConfig": tune.RunConfig}
    hooks = ("on_trial_start", "on_trial_result", "on_trial_complete", "on_trial_error")
    saved_hooks = {name: StudyCallback.__dict__[name] for name in hooks}
    saved_suggest = StudySearch.__dict__.get("suggest")
    orig_fit, orig_tune_config, orig_run_config = saved["Tuner.fit"], saved["TuneConfig"], \
        saved["RunConfig"]
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

    def timed_hook(name, method):
        @wraps(method)
        def hook(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                timeline.hook_s[name] = timeline.hook_s.get(name, 0.0) + time.perf_counter() - t0
        return hook

    base_suggest = saved_suggest or StudySearch.suggest

    def suggest(self, trial_id):
        t0 = time.time()
        try:
            return base_suggest(self, trial_id)
        finally:
            timeline.suggest.append((t0, time.time()))

    tune.Tuner.fit = fit
    tune.TuneConfig = TuneConfig
    tune.RunConfig = RunConfig
    for name in hooks:
        setattr(StudyCallback, name, timed_hook(name, saved_hooks[name]))
    StudySearch.suggest = suggest
    try:
        yield timing_cb
    finally:
        tune.Tuner.fit = saved["Tuner.fit"]
        tune.TuneConfig = saved["TuneConfig"]
        tune.RunConfig = saved["RunConfig"]
        for name in hooks:
            setattr(StudyCallback, name, saved_hooks[name])
        if saved_suggest is None:
            del StudySearch.suggest
        else:
            StudySearch.suggest = saved_suggest


# --- the runs ---------------------------------------------------------------------------

def run_service(plan, trainable, *, reuse_actors: bool | None) -> dict[str, Any]:
    from data_access.recorder import DjangoStudyRecorder
    from tuning.tracking.progress import ProgressDisplay
    from tuning.study import run_study

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
            "best_value": outcome.best_value, "outcome": outcome}


def run_bare_tune(plan, trainable) -> dict[str, Any]:
    """The same trials through plain Ray Tune: random configs, no callbacks of ours."""
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
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=f"bare-{time.strftime('%H%M%S')}", verbose=0,
                                  storage_path=config.infra.ray.storage_path,
                                  callbacks=[timing_cb]))
    timeline.fit_called = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        tuner.fit()
    timeline.fit_returned = t1 = time.time()
    return {"t0": t0, "t1": t1, "timeline": timeline, "counts": None, "best_value": None}


def summarize(name: str, run: dict[str, Any], *, n_trials: int, work_total: float,
              concurrency: int) -> dict[str, Any]:
    t: Timeline = run["timeline"]
    wall = run["t1"] - run["t0"]
    minimum = work_total / concurrency
    fit = (t.fit_returned - t.fit_called) if t.fit_called and t.fit_returned else None
    pids = {w.get("bench_pid") for w in t.worker.values()}
    # Where the time goes from fit() to the first trial running.
    first = min(t.trial_start, key=t.trial_start.get) if t.trial_start else None
    phases: dict[str, float | None] = {}
    if first is not None and t.fit_called:
        w = t.worker.get(first, {})
        phases = {
            "fit() -> controller set up": _delta(t.fit_called, t.setup),
            "controller set up -> first suggest done":
                _delta(t.setup, t.suggest[0][1] if t.suggest else None),
            "first suggest (Optuna TPE ask)":
                (t.suggest[0][1] - t.suggest[0][0]) if t.suggest else None,
            "first suggest -> actor ready (placement group, worker process, imports)":
                _delta(t.suggest[0][1] if t.suggest else None, t.trial_start[first]),
            "worker process started (relative to fit())":
                _delta(t.fit_called, w.get("bench_proc_started")),
            "actor ready -> trial function entered (driver: MLflow child run, DB row; "
            "worker: with_parameters fetch + unpickle, which imports torch in a new process)":
                _delta(t.trial_start[first], w.get("bench_fn_entered")),
            "fit() -> trial function entered (total)":
                _delta(t.fit_called, w.get("bench_fn_entered")),
        }
    # Per trial: dead time of a slot = what the trial did not spend inside its function.
    inside = []
    for trial_id, w in t.worker.items():
        done = t.trial_complete.get(trial_id)
        if done and w.get("bench_fn_entered"):
            inside.append(done - w["bench_fn_entered"])
    busy = sum(inside)
    idle_per_trial = ((fit or wall) * concurrency - busy) / n_trials if inside else None
    start_latency = [t.trial_start[k] - s for k, s in _suggest_by_trial(t).items()
                     if k in t.trial_start]
    hooks = sum(t.hook_s.values())
    lifecycle = trial_lifecycle(t)
    return {
        "variant": name, "reuse_actors": t.reuse_actors, "wall_s": wall, "min_s": minimum, "ratio": wall / minimum,
        "fit_s": fit, "fit_ratio": (fit / minimum) if fit else None,
        "pre_fit_s": _delta(run["t0"], t.fit_called), "post_fit_s": _delta(t.fit_returned,
                                                                          run["t1"]),
        "worker_processes": len(pids), "trials_seen": len(t.worker),
        "counts": run["counts"],
        "slot_idle_per_trial_s": idle_per_trial,
        "trial_fn_to_complete_median_s": median(inside),
        "suggest_to_actor_ready_median_s": median(start_latency),
        "driver_hooks_per_trial_ms": 1000 * hooks / n_trials if t.hook_s else None,
        "db_writes_per_trial_ms": 1000 * t.recorder_s / n_trials if t.hook_s else None,
        "hook_s": {k: round(v, 3) for k, v in t.hook_s.items()},
        "first_trial_phases_s": phases,
        "per_trial_median_s": lifecycle,
    }


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


def _suggest_by_trial(t: Timeline) -> dict[str, float]:
    # Suggest order matches trial creation order, which matches trial_start's keys only
    # loosely; pair by rank among started trials.
    starts = sorted(t.trial_start.items(), key=lambda kv: kv[1])
    ends = sorted(s[1] for s in t.suggest)
    return {trial_id: ends[i] for i, (trial_id, _) in enumerate(starts) if i < len(ends)}


def _delta(a, b):
    return (b - a) if a is not None and b is not None else None


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, help="trials per variant (48; quick: 12)")
    p.add_argument("--reports", type=int, default=3, help="reports per trial (3)")
    p.add_argument("--work", type=float, default=0.5, help="seconds of work per report (0.5)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (2)")
    p.add_argument("--busy", action="store_true", help="spin the CPU instead of sleeping")
    p.add_argument("--checkpoint", choices=("last", "every"), default="last",
                   help="which reports carry a checkpoint (last)")
    p.add_argument("--variants",
                   help="comma-separated subset of: service, service+reuse, bare tune "
                        "(quick: the first two; else all three)")
    args = p.parse_args(argv)
    n_trials = args.trials or (12 if args.quick else 48)
    spec = args.variants or ("service,service+reuse" if args.quick
                             else "service,service+reuse,bare tune")
    variants = [v.strip() for v in spec.split(",") if v.strip()]
    quiet_logs()
    info = machine_info()
    print(f"bench.overhead: {n_trials} trials x {args.reports} reports x {args.work} s "
          f"{'busy' if args.busy else 'sleep'}, {args.concurrency} at once, per variant")
    print_machine(info)

    setup: dict[str, float] = {}
    rows, results = [], []
    with Workspace("overhead", keep=args.keep) as ws:
        t0 = time.perf_counter()
        ws.setup_django()
        setup["django setup + migrate"] = time.perf_counter() - t0
        setup["MLflow store created (first use)"] = ws.warm_mlflow()
        t0 = time.perf_counter()
        theme = ws.demo_theme()
        setup["demo theme imported + read (DB)"] = time.perf_counter() - t0
        folder = ws.configs(
            optuna_params={"study": {"n_trials": n_trials},
                           "base_params": {"training": {"num_epochs": args.reports}}},
            config={"mlflow": {"log_models": "none"}, "max_concurrent_trials": args.concurrency,
                    "ray": {"num_cpus": args.concurrency}, "resources": {"cpu": 1, "gpu": 0},
                    "scheduler": {"type": "none"}})
        config = ws.load_config(folder, theme_id=theme.id)
        from tuning.study import prepare_study

        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            plan = prepare_study(config, theme)
        setup["prepare_study (decode or cache)"] = time.perf_counter() - t0
        setup["ray.init (local cluster start)"] = start_ray(config)
        setup["imports of a trial in a new process (torch, tuning.trial.trainable)"] = \
            cold_import_seconds()
        import ray

        trainable = make_fixed_work_trial(
            reports=args.reports, work_s=args.work, busy=args.busy,
            checkpoint_every=args.checkpoint == "every",
            checkpoint_ref=ray.put(checkpoint_bytes(plan)))
        work_total = n_trials * args.reports * args.work
        try:
            for variant in variants:
                if variant == "bare tune":
                    run = run_bare_tune(plan, trainable)
                else:
                    run = run_service(plan, trainable,
                                      reuse_actors=True if variant == "service+reuse" else None)
                s = summarize(variant, run, n_trials=n_trials, work_total=work_total,
                              concurrency=args.concurrency)
                results.append(s)
                rows.append([variant, s["reuse_actors"], s["wall_s"], s["min_s"], f"{s['ratio']:.3f}",
                             s["fit_s"], s["pre_fit_s"], s["post_fit_s"],
                             s["slot_idle_per_trial_s"], s["driver_hooks_per_trial_ms"],
                             s["db_writes_per_trial_ms"], s["worker_processes"]])
                print(f"  {variant}: {s['wall_s']:.1f} s, ratio {s['ratio']:.3f}", flush=True)
        finally:
            stop_ray()

    print()
    print(table(["setup (not in the ratio)", "s"], [[k, v] for k, v in setup.items()]))
    print()
    print(table(["variant", "reuse_actors", "wall s", "min s", "ratio", "fit s", "pre-fit s", "post-fit s",
                 "idle/trial s", "hooks ms/trial", "DB ms/trial", "worker procs"], rows,
                title="wall = run_study() (bare tune: Tuner.fit()); min = trials x reports x "
                      "work / concurrency"))
    for s in results:
        if s["first_trial_phases_s"]:
            print()
            print(table([f"{s['variant']}: fit() -> first trial running", "s"],
                        [[k, v] for k, v in s["first_trial_phases_s"].items()]))
    print()
    life = [[k] + [s["per_trial_median_s"].get(k) for s in results]
            for k in results[0]["per_trial_median_s"]]
    print(table(["per trial (median s)"] + [s["variant"] for s in results], life,
                title=f"report to report includes {args.work} s of work"))
    print()
    shipped = next((s for s in results if s["variant"] == "service"), results[0])
    reuse = next((s for s in results if s["variant"] == "service+reuse"), None)
    verdict = "met" if shipped["ratio"] <= TARGET else f"missed by {shipped['ratio'] - TARGET:.2f}"
    print(f"ratio (service as shipped) {shipped['ratio']:.3f}, target <= {TARGET}: {verdict}"
          + (f"; with reuse_actors=True {reuse['ratio']:.3f}" if reuse else ""))
    emit({"bench": "overhead", "ratio": round(shipped["ratio"], 4), "target": TARGET,
          "met": shipped["ratio"] <= TARGET,
          "ratio_meaning": "run_study wall / (trials x reports x work / concurrency)",
          "ratio_reuse_actors": round(reuse["ratio"], 4) if reuse else None,
          "quick": args.quick, "trials": n_trials, "reports": args.reports, "work_s": args.work,
          "concurrency": args.concurrency, "busy": args.busy, "checkpoint": args.checkpoint,
          "setup_s": {k: round(v, 3) for k, v in setup.items()},
          "variants": results, "machine": info})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
