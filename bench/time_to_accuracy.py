"""Time to a validation accuracy: the original one-process Optuna study against this
service, on the demo digits theme, with the same search space, trial budget and seed.

    python -m bench.time_to_accuracy [--quick] [--trials N] [--epochs E] [--order ...]

original  what ../shared/seed describes: optuna.create_study + study.optimize, one trial
          at a time in one process (torch on all cores), no pruning, an MLflow parent
          run with one nested child run per trial (mlflow.start_run(nested=True)), each
          trial's model logged, the best registered. Its trials reuse this repo's model
          and loop (tuning.trial.trainable: DeviceSplit, make_optimizer, train_epoch, evaluate),
          so the comparison is about how trials are run, not how an epoch is written.
service   run_study: Ray Tune, `max_concurrent_trials` trials at once (1 CPU thread each),
          ASHA on valid_acc, checkpoints each epoch, MLflow child runs, the DB recorder.

Both use configs/demo's search space and TPE seed; with fewer trials than TPE's 10
start-up trials both draw the same configurations. Both read the same prepared arrays.

Ratio = service seconds / original seconds until the best validation accuracy so far
first reaches the target; the target (unless --target) is 0.98 x the lowest of the runs'
best validation accuracies, so all reach it. The headline baseline is the original with
1 torch thread: its trials then compute bit for bit what the service's trials (1 thread
each) compute, so both reach the target in the same trial and epoch. The original with
torch's default threads (full mode) computes slightly different floats, so one lucky
early epoch can decide its time to a target; it is compared in the table too. Target
ratio <= 0.33.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from typing import Any

from bench.common import (Workspace, emit, machine_info, parser, print_machine, quiet_logs,
                          start_ray, stop_ray, table)

TARGET_RATIO = 0.33


# --- the original approach --------------------------------------------------------------

def suggest(trial, distributions: dict[str, Any]) -> dict[str, Any]:
    """Define-by-run suggestions in the order of the space, as the seed's objective did."""
    import optuna.distributions as od

    sample = {}
    for name, d in distributions.items():
        if isinstance(d, od.FloatDistribution):
            sample[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, od.IntDistribution):
            sample[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        else:
            sample[name] = trial.suggest_categorical(name, d.choices)
    return sample


def run_original(plan, *, n_trials: int, threads: int | None) -> dict[str, Any]:
    """One process, study.optimize, MLflow parent + nested child runs; torch uses
    `threads` CPU threads (None: torch's default, one per core, as the seed's script)."""
    import logging

    import mlflow
    import mlflow.pytorch
    import optuna
    import torch

    from tuning.data.augment import AugmentSettings
    from tuning.trial.model import build_model
    from tuning.config.search_space import to_distributions
    from tuning.study import augment_settings
    from tuning.trial.trainable import (DeviceSplit, channel_stats, evaluate, make_optimizer,
                                  train_epoch)

    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    config = plan.config
    distributions = to_distributions(config.space)
    augments: AugmentSettings | None = augment_settings(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history: list[tuple[float, int, int, float]] = []   # (time, trial, epoch, valid_acc)
    finals: dict[int, dict[str, float]] = {}
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()
    t0 = time.time()
    # By id, not mlflow.set_experiment: that would set this process's active experiment,
    # which the service's fluent log_model (start_run(run_id=...)) later trips over.
    client = mlflow.MlflowClient()
    name = plan.theme.name + "_original"
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(name)

    def objective(trial: optuna.Trial) -> float:
        sample = suggest(trial, distributions)
        params = config.trial_params(sample)
        with mlflow.start_run(run_name=f"trial_{trial.number}", nested=True,
                              experiment_id=experiment_id):
            mlflow.log_params(sample)
            torch.manual_seed(params.data.seed)
            model = build_model(params.model.name, num_classes=plan.theme.num_classes,
                                in_channels=params.data.channels).to(device)
            optimizer = make_optimizer(params, model)
            train, valid, test = (DeviceSplit(s, device)
                                  for s in (plan.data.train, plan.data.valid, plan.data.test))
            mean, std = channel_stats(train.images)
            generator = torch.Generator().manual_seed(params.data.seed)
            for epoch in range(params.training.num_epochs):
                train_loss, train_acc = train_epoch(
                    model, optimizer, train, mean, std, batch_size=params.training.batch_size,
                    augments=augments, generator=generator)
                valid_loss, valid_acc = evaluate(model, valid, mean, std)
                history.append((time.time(), trial.number, epoch + 1, valid_acc))
                mlflow.log_metrics({"train_loss": train_loss, "train_acc": train_acc,
                                    "valid_loss": valid_loss, "valid_acc": valid_acc},
                                   step=epoch + 1)
            test_loss, test_acc = evaluate(model, test, mean, std)
            mlflow.log_metrics({"test_loss": test_loss, "test_acc": test_acc})
            mlflow.pytorch.log_model(model.cpu(), name="model", serialization_format="pickle",
                                     pip_requirements=["torch", "torchvision"])
        finals[trial.number] = {"test_acc": test_acc, "valid_acc": valid_acc}
        return test_acc

    study = optuna.create_study(direction=config.study.direction,
                                sampler=optuna.samplers.TPESampler(seed=config.sampler_seed))
    with mlflow.start_run(run_name=config.run_name, experiment_id=experiment_id) as parent:
        study.optimize(objective, n_trials=n_trials)
        mlflow.log_metric("best_value", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        best_run = mlflow.search_runs(
            experiment_ids=[experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                          f"attributes.run_name = 'trial_{study.best_trial.number}'",
            output_format="list")[0]
        mlflow.register_model(f"runs:/{best_run.info.run_id}/model",
                              f"{plan.theme.name}_original_model")
    t1 = time.time()
    torch.set_num_threads(saved_threads)
    return {"t0": t0, "t1": t1, "history": history, "best_test_acc": study.best_value,
            "threads": used_threads,
            "best_valid_acc": max(h[3] for h in history),
            "params": [t.params for t in study.trials], "trials": len(study.trials),
            "pruned": 0, "epochs_trained": len(history)}


# --- this service -----------------------------------------------------------------------

def run_service_study(plan, *, reuse_actors: bool | None) -> dict[str, Any]:
    from bench.overhead import run_service
    from tuning.trial.trainable import train_trial

    run = run_service(plan, train_trial, reuse_actors=reuse_actors)
    timeline = run["timeline"]
    history = [(t, trial_id, r.get("epoch"), r.get("valid_acc"))
               for t, trial_id, r in timeline.results if r.get("valid_acc") is not None]
    outcome = run["outcome"]
    return {"t0": run["t0"], "t1": run["t1"], "history": history,
            "best_test_acc": outcome.best_value,
            "best_valid_acc": max((h[3] for h in history), default=None),
            "params": None, "trials": sum(outcome.counts.values()),
            "pruned": outcome.counts.get("PRUNED", 0), "epochs_trained": len(history),
            "counts": outcome.counts}


# --- comparison -------------------------------------------------------------------------

def time_to(history, t0: float, target: float) -> float | None:
    for t, *_rest, acc in sorted(history, key=lambda h: h[0]):
        if acc is not None and acc >= target:
            return t - t0
    return None


def _floor4(x: float) -> float:
    return math.floor(x * 10000) / 10000


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, help="trial budget (quick 8, else 10)")
    p.add_argument("--epochs", type=int, help="epochs per trial (quick 2, else 4)")
    p.add_argument("--image-size", type=int,
                   help="data.image_size (quick 16, else the demo's 32); digits are 8x8")
    p.add_argument("--concurrency", type=int, default=2, help="service: trials at once (2)")
    p.add_argument("--target", type=float, help="validation accuracy to reach (default: auto)")
    p.add_argument("--reuse", action="store_true",
                   help="also run the service with reuse_actors=True (default in full mode)")
    p.add_argument("--original-threads",
                   help="comma-separated torch thread counts for the original, 'default' = "
                        "torch's default (one per core); quick: 1, else default,1")
    p.add_argument("--order", default="original,service",
                   help="which runs first (original,service or service,original)")
    args = p.parse_args(argv)
    n_trials = args.trials or (6 if args.quick else 10)
    epochs = args.epochs or (2 if args.quick else 4)
    image_size = args.image_size or (16 if args.quick else 32)
    with_reuse = args.reuse or not args.quick
    thread_spec = args.original_threads or ("1" if args.quick else "default,1")
    original_threads = [None if t.strip() == "default" else int(t) for t in thread_spec.split(",")]
    quiet_logs()
    info = machine_info()
    print(f"bench.time_to_accuracy: demo digits at {image_size}px, {n_trials} trials x "
          f"{epochs} epochs; service: {args.concurrency} at once, ASHA")
    print_machine(info)

    from tuning.study import prepare_study

    runs: dict[str, dict[str, Any]] = {}
    setup: dict[str, float] = {}
    with Workspace("tta", keep=args.keep) as ws:
        ws.setup_django()
        ws.warm_mlflow()
        theme = ws.demo_theme()
        folder = ws.configs(
            optuna_params={"study": {"n_trials": n_trials},
                           "base_params": {"training": {"num_epochs": epochs}}},
            params={"data": {"image_size": image_size}},
            config={"max_concurrent_trials": args.concurrency,
                    "ray": {"num_cpus": args.concurrency},
                    "resources": {"cpu": 1, "gpu": 0},
                    "scheduler": {"type": "asha", "metric": "valid_acc", "mode": "max",
                                  "grace_period": 1, "reduction_factor": 2}})
        config = ws.load_config(folder, theme_id=theme.id)
        with contextlib.redirect_stdout(io.StringIO()):
            plan = prepare_study(config, theme)
        order = [o.strip() for o in args.order.split(",")]
        try:
            for name in order:
                if name == "original":
                    for threads in original_threads:
                        r = run_original(plan, n_trials=n_trials, threads=threads)
                        label = f"original ({r['threads']} thread{'s' * (r['threads'] > 1)})"
                        runs[label] = r
                        print(f"  {label}: {r['t1'] - r['t0']:.1f} s, best valid_acc "
                              f"{r['best_valid_acc']:.4f}", flush=True)
                else:
                    if "ray.init (not in the times)" not in setup:
                        setup["ray.init (not in the times)"] = start_ray(config)
                    runs["service"] = run_service_study(plan, reuse_actors=None)
                    if with_reuse:
                        runs["service+reuse"] = run_service_study(plan, reuse_actors=True)
                    for label in ("service", "service+reuse"):
                        if label in runs:
                            r = runs[label]
                            print(f"  {label}: {r['t1'] - r['t0']:.1f} s, best valid_acc "
                                  f"{r['best_valid_acc']:.4f}", flush=True)
        finally:
            stop_ray()

    bests = [r["best_valid_acc"] for r in runs.values() if r["best_valid_acc"] is not None]
    # Rounded down, so that a run whose best equals the level counts as reaching it.
    target = args.target if args.target is not None else _floor4(0.98 * min(bests))
    rows = []
    for name, r in runs.items():
        rows.append([name, r["t1"] - r["t0"], time_to(r["history"], r["t0"], target),
                     r["best_valid_acc"], r["best_test_acc"], r["trials"], r["pruned"],
                     r["epochs_trained"], 60 * r["epochs_trained"] / (r["t1"] - r["t0"])])
    print()
    print(table(["run", "wall s", f"s to valid_acc>={target}", "best valid_acc",
                 "best test_acc", "trials", "pruned", "epochs trained", "epochs/min"], rows))
    # Time to a few other levels, to show the curve and not one lucky point.
    levels = sorted({_floor4(f * min(bests)) for f in (0.9, 0.95, 0.98, 1.0)})
    curve = [[name] + [time_to(r["history"], r["t0"], lv) for lv in levels]
             for name, r in runs.items()]
    print()
    print(table(["run"] + [f"s to {lv}" for lv in levels], curve,
                title="seconds until the best validation accuracy so far reaches each level"))
    # The primary baseline is the original with 1 torch thread: its trials compute exactly
    # what the service's (1 thread each) compute, so both meet the target in the same
    # trial and epoch, and the ratio measures how trials are run. Another thread count
    # changes the float results, and a single lucky early epoch can then decide the
    # time to a target: those originals are compared too, but not as the headline.
    originals = [n for n in runs if n.startswith("original")]
    baseline = next((n for n in originals if n == "original (1 thread)"), originals[0])
    best_level = levels[-1]

    def seconds(name: str, level: float) -> float | None:
        return time_to(runs[name]["history"], runs[name]["t0"], level)

    def wall(name: str) -> float:
        return runs[name]["t1"] - runs[name]["t0"]

    def div(a, b):
        return a / b if a is not None and b else None

    comparisons, ratio_rows = {}, []
    for service in (n for n in ("service", "service+reuse") if n in runs):
        for original in originals:
            c = {"to_target": div(seconds(service, target), seconds(original, target)),
                 "to_best_level": div(seconds(service, best_level),
                                      seconds(original, best_level)),
                 "whole_study": wall(service) / wall(original)}
            comparisons[f"{service} / {original}"] = c
            ratio_rows.append([f"{service} / {original}", c["to_target"], c["to_best_level"],
                               c["whole_study"]])
    print()
    print(table(["ratio (lower is faster)", f"to {target}", f"to {best_level}", "whole study"],
                ratio_rows))
    ratio = comparisons[f"service / {baseline}"]["to_target"]
    reuse_ratio = comparisons.get(f"service+reuse / {baseline}", {}).get("to_target")
    wall_ratio = comparisons[f"service / {baseline}"]["whole_study"]
    print(f"\nratio service/{baseline} to valid_acc >= {target}: "
          f"{ratio if ratio is None else round(ratio, 3)} (target <= {TARGET_RATIO}); "
          f"whole-study wall ratio {wall_ratio:.3f}"
          + (f"; with reuse_actors=True {reuse_ratio:.3f}" if reuse_ratio else ""))
    emit({"bench": "time_to_accuracy", "ratio": round(ratio, 4) if ratio else None,
          "target": TARGET_RATIO, "met": bool(ratio is not None and ratio <= TARGET_RATIO),
          "ratio_meaning": "service / original (1 torch thread, the same per-trial numerics) "
                           "seconds until the best valid_acc so far >= target_acc",
          "baseline": baseline, "comparisons": comparisons,
          "target_acc": target, "ratio_reuse_actors": reuse_ratio, "wall_ratio": wall_ratio,
          "best": {n: {"valid_acc": r["best_valid_acc"], "test_acc": r["best_test_acc"]}
                   for n, r in runs.items()},
          "wall_s": {n: r["t1"] - r["t0"] for n, r in runs.items()},
          "pruned": {n: r["pruned"] for n, r in runs.items()},
          "epochs_trained": {n: r["epochs_trained"] for n, r in runs.items()},
          "curve_levels": levels, "curve_s": curve, "setup_s": setup,
          "trials": n_trials, "epochs": epochs, "image_size": image_size,
          "concurrency": args.concurrency, "quick": args.quick, "machine": info})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
