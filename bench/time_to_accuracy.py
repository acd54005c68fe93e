"""Time to a validation accuracy: the original one-process Optuna study against this
service, on the demo digits theme, with the same search space, trial budget and seed.

    python -m bench.time_to_accuracy [--quick] [--trials N] [--epochs E] [--steps S]
                                     [--repeats R] [--order ...]
    python -m bench.time_to_accuracy --warm [--quick] ...   (bench.warm_vs_cold)

original         what ../shared/seed describes: optuna.create_study + study.optimize, one
                 trial at a time in one process (torch on all cores), no pruning, an MLflow
                 parent run with one nested child run per trial, each trial's model logged,
                 the best registered. Its trials reuse this repo's model and loop
                 (tuning.trial.trainable: DeviceSplit, make_optimizer, train_epoch,
                 evaluate), so the comparison is about how trials are run, not how an
                 epoch is written.
service-no-asha  run_study with `infra.scheduler.type: none`: Ray Tune,
                 `max_concurrent_trials` trials at once (1 CPU thread each), checkpoints
                 each epoch, MLflow child runs, the DB recorder; every trial runs all epochs.
service          the same with ASHA on valid_acc (grace 1 epoch, reduction factor 2).

original (1 thread) -> service-no-asha is the concurrency gain, service-no-asha ->
service the ASHA gain; gains are "times faster" (> 1 is a gain) and, within a
round, multiply to 1 / ratio. All sides use configs/demo's search space and TPE seed. Within TPE's 10
start-up trials the draws do not depend on results, so every side must draw the same
configurations: the bench compares the sampled parameters of those first trials (Optuna
numbers 0..min(trials, 10)-1, read from each side's Optuna study) and says so.

The variants run in rounds (--repeats): rounds 1, 3, ... in --order, rounds 2, 4, ...
reversed, so that a shared machine's load hits all alike; ratios and gains are medians of
per-round ratios. Ray's start, the Django/MLflow stores and the data preparation happen
once before the clock runs and are in no time.

Ratio = service seconds / original seconds until the best validation accuracy so far
first reaches the target; the target (unless --target) is 0.98 x the lowest of the runs'
best validation accuracies, so all reach it. The headline baseline is the original with
1 torch thread: its trials then compute bit for bit what the service's trials (1 thread
each) compute, so all reach the target in the same trial and epoch (unless ASHA stops
that trial before). The original with
torch's default threads (full mode) computes slightly different floats, so one lucky
early epoch can decide its time to a target; it is compared in the table too. Target
ratio <= 0.33.

--quick (6 trials x 2 epochs of 6 batches at 16 px, 1 round) checks that all of this
works: with epochs that short, the service's fixed costs per trial and per epoch
(actors, checkpoints, MLflow) weigh far more than in a real study, so its concurrency
gain says little; the full mode (10 x 4 whole epochs at 32 px, 2 rounds) is the figure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import time
from typing import Any, Callable

from bench.common import (
    Workspace,
    emit,
    machine_info,
    median,
    parser,
    print_machine,
    quiet_logs,
    start_ray,
    stop_ray,
    table,
)

TARGET_RATIO = 0.33
# tuning.study._searcher builds TPESampler(seed=...) with Optuna's default start-up count:
# before that many trials are finished or pruned, TPE samples at random from its seed, so
# these draws do not depend on which trials ran first or were pruned.
TPE_STARTUP_TRIALS = 10
ORIGINAL, NO_ASHA, ASHA, REUSE = "original", "service-no-asha", "service", "service+reuse"
NOT_MEASURED = (
    "Not measured: Ray's start (setup_s; paid once per cluster), the Django/MLflow stores and "
    "the data preparation (shared, before the clock); more than {cpus} cores or a GPU (the "
    "concurrency gain is capped by the cores: the original cannot use more, the service "
    "can); TPE's model-guided phase (after trial {startup}, the sides see different "
    "finished trials); other schedulers or ASHA settings; model quality beyond the best "
    "valid/test accuracy (a trial ASHA pruned might have become the best).")


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


def train_original_trial(plan, params, device, record: Callable[[int, float], None]
                         ) -> tuple[Any, float, float]:
    """One trial's epochs as the seed's objective ran them; returns (model, test_acc,
    last valid_acc). steps_per_epoch is honoured as train_trial honours it."""
    import mlflow
    import torch

    from tuning.study import augment_settings
    from tuning.trial.batches import channel_stats
    from tuning.trial.model import build_model
    from tuning.trial.trainable import DeviceSplit, evaluate, make_optimizer, train_epoch

    torch.manual_seed(params.data.seed)
    model = build_model(params.model.name, num_classes=plan.theme.num_classes,
                        in_channels=params.data.channels).to(device)
    optimizer = make_optimizer(params, model)
    train, valid, test = (DeviceSplit(s, device)
                          for s in (plan.data.train, plan.data.valid, plan.data.test))
    mean, std = channel_stats(train.images)
    generator = torch.Generator().manual_seed(params.data.seed)
    augments = augment_settings(plan.config)
    for epoch in range(params.training.num_epochs):
        train_loss, train_acc = train_epoch(
            model, optimizer, train, mean, std, batch_size=params.training.batch_size,
            augments=augments, generator=generator, max_steps=params.training.steps_per_epoch)
        valid_loss, valid_acc = evaluate(model, valid, mean, std)
        record(epoch + 1, valid_acc)
        mlflow.log_metrics({"train_loss": train_loss, "train_acc": train_acc,
                            "valid_loss": valid_loss, "valid_acc": valid_acc}, step=epoch + 1)
    test_loss, test_acc = evaluate(model, test, mean, std)
    mlflow.log_metrics({"test_loss": test_loss, "test_acc": test_acc})
    return model, test_acc, valid_acc


def original_experiment(name: str) -> str:
    """By id, not mlflow.set_experiment: that would set this process's active experiment,
    which the service's fluent log_model (start_run(run_id=...)) later trips over."""
    import mlflow

    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name)


def run_original(plan, *, n_trials: int, threads: int | None) -> dict[str, Any]:
    """One process, study.optimize, MLflow parent + nested child runs; torch uses
    `threads` CPU threads (None: torch's default, one per core, as the seed's script)."""
    import logging

    import mlflow
    import mlflow.pytorch
    import optuna
    import torch

    from tuning.config.search_space import to_distributions

    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
    config = plan.config
    distributions = to_distributions(config.space)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    history: list[tuple[float, int, int, float]] = []   # (time, trial, epoch, valid_acc)
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()
    t0 = time.time()
    experiment_id = original_experiment(plan.theme.name + "_original")

    def objective(trial: optuna.Trial) -> float:
        sample = suggest(trial, distributions)
        with mlflow.start_run(run_name=f"trial_{trial.number}", nested=True,
                              experiment_id=experiment_id):
            mlflow.log_params(sample)
            model, test_acc, _ = train_original_trial(
                plan, config.trial_params(sample), device,
                lambda epoch, acc: history.append((time.time(), trial.number, epoch, acc)))
            mlflow.pytorch.log_model(model.cpu(), name="model", serialization_format="pickle",
                                     pip_requirements=["torch", "torchvision"])
        return test_acc

    study = optuna.create_study(direction=config.study.direction,
                                sampler=optuna.samplers.TPESampler(seed=config.sampler_seed))
    with mlflow.start_run(run_name=config.run_name, experiment_id=experiment_id) as parent:
        study.optimize(objective, n_trials=n_trials)
        mlflow.log_metric("best_value", study.best_value)
        mlflow.log_params({f"best.{k}": v for k, v in study.best_params.items()})
        best_run = mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and "
                          f"attributes.run_name = 'trial_{study.best_trial.number}'",
            output_format="list")[0]
        mlflow.register_model(f"runs:/{best_run.info.run_id}/model",
                              f"{plan.theme.name}_original_model")
    t1 = time.time()
    torch.set_num_threads(saved_threads)
    return {"t0": t0, "t1": t1, "history": history, "best_test_acc": study.best_value,
            "threads": used_threads, "best_valid_acc": max(h[3] for h in history),
            "params": {t.number: t.params for t in study.trials}, "trials": len(study.trials),
            "pruned": 0, "epochs_trained": len(history)}


# --- this service -----------------------------------------------------------------------

@contextlib.contextmanager
def recording_params(into: dict[int, dict[str, Any]]):
    """Keep the parameters each Optuna trial of the service's searcher was given, by
    Optuna number, read back from its Optuna study (its in-memory storage is gone once
    run_study returns). Nothing in tuning/ is changed: the class is patched here only."""
    from tuning.optuna_adapter import StudySearch

    saved = StudySearch.__dict__["suggest"]

    def suggest(self, trial_id):
        config = saved(self, trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None:
            into[trial.number] = dict(trial.params)
        return config

    StudySearch.suggest = suggest
    try:
        yield into
    finally:
        StudySearch.suggest = saved


def run_service_study(plan, *, reuse_actors: bool | None) -> dict[str, Any]:
    from bench.overhead import run_service
    from tuning.trial.trainable import train_trial

    params: dict[int, dict[str, Any]] = {}
    with recording_params(params):
        run = run_service(plan, train_trial, reuse_actors=reuse_actors)
    timeline = run["timeline"]
    history = [(t, trial_id, r.get("epoch"), r.get("valid_acc"))
               for t, trial_id, r in timeline.results if r.get("valid_acc") is not None]
    outcome = run["outcome"]
    return {"t0": run["t0"], "t1": run["t1"], "history": history,
            "best_test_acc": outcome.best_value,
            "best_valid_acc": max((h[3] for h in history), default=None),
            "params": params, "trials": sum(outcome.counts.values()),
            "pruned": outcome.counts.get("PRUNED", 0), "epochs_trained": len(history),
            "counts": outcome.counts, "reuse_actors": timeline.reuse_actors}


# --- the rounds -------------------------------------------------------------------------

def run_order(spec: str) -> list[str]:
    """--order names original, service-no-asha and service (service+reuse follows
    service); service-no-asha, when left out, runs right before service, so that an
    order written before it existed keeps its meaning and the gains can be told apart."""
    order = [o.strip() for o in spec.split(",") if o.strip()]
    unknown = set(order) - {ORIGINAL, NO_ASHA, ASHA}
    if unknown or len(set(order)) != len(order):
        raise SystemExit(f"--order: use original, {NO_ASHA} and {ASHA}, each once ({spec!r})")
    if ASHA in order and NO_ASHA not in order:
        order.insert(order.index(ASHA), NO_ASHA)
    return order


def run_rounds(variants: dict[str, list[tuple[str, Callable[[], dict]]]], order: list[str],
               repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Every variant once per round; rounds 2, 4, ... run the order reversed (ABBA), so
    that no variant always runs first or last on a machine whose load drifts."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in range(repeats):
        for group in (order if r % 2 == 0 else order[::-1]):
            for label, run in variants[group]:
                result = run()
                result["round"] = r + 1
                label = label or result["label"]
                runs.setdefault(label, []).append(result)
                print(f"  round {r + 1} {label}: {result['t1'] - result['t0']:.1f} s, best "
                      f"valid_acc {result['best_valid_acc']:.4f}", flush=True)
    return runs


def original_variants(plan, n_trials: int, thread_counts: list[int | None]):
    def one(threads):
        def run():
            r = run_original(plan, n_trials=n_trials, threads=threads)
            r["label"] = f"original ({r['threads']} thread{'s' * (r['threads'] > 1)})"
            return r
        return None, run
    return [one(t) for t in thread_counts]


# --- comparison -------------------------------------------------------------------------

def time_to(history, t0: float, target: float) -> float | None:
    for t, *_rest, acc in sorted(history, key=lambda h: h[0]):
        if acc is not None and acc >= target:
            return t - t0
    return None


def _floor4(x: float) -> float:
    return math.floor(x * 10000) / 10000


def first_configs(runs: dict[str, list[dict]], n_trials: int) -> dict[str, Any]:
    """Whether every run (all variants, all rounds) drew the same parameters for Optuna
    trials 0..n-1, n = min(trials, TPE's start-up trials); later draws depend on which
    trials had finished, which concurrency and pruning change on purpose."""
    n = min(n_trials, TPE_STARTUP_TRIALS)
    numbers = list(range(n))
    reference_label = next(iter(runs))
    reference = runs[reference_label][0]["params"]
    mismatches, later_equal, later_total = [], 0, 0
    for label, results in runs.items():
        for r in results:
            for k in numbers:
                if r["params"].get(k) is None or r["params"].get(k) != reference.get(k):
                    mismatches.append({"run": label, "round": r["round"], "trial": k,
                                       "params": r["params"].get(k),
                                       "reference": reference.get(k)})
            for k in set(r["params"]) - set(numbers):
                later_total += 1
                later_equal += r["params"][k] == reference.get(k)
    same = not mismatches and all(k in reference for k in numbers)
    return {"same": same, "trials_compared": numbers, "reference": reference_label,
            "runs_compared": sum(len(v) for v in runs.values()), "mismatches": mismatches,
            "later_trials_equal": f"{later_equal}/{later_total}",
            "reference_params": {k: reference.get(k) for k in numbers}}


def measures(r: dict[str, Any], target: float, best_level: float) -> dict[str, float | None]:
    return {"to_target": time_to(r["history"], r["t0"], target),
            "to_best_level": time_to(r["history"], r["t0"], best_level),
            "whole_study": r["t1"] - r["t0"]}


def per_round_ratios(runs, a: str, b: str, target: float, best_level: float
                     ) -> dict[str, float | None]:
    """Median over rounds of (a's seconds / b's seconds) within the same round."""
    out = {}
    for key in ("to_target", "to_best_level", "whole_study"):
        values = []
        for ra, rb in zip(runs[a], runs[b]):
            x, y = measures(ra, target, best_level)[key], measures(rb, target, best_level)[key]
            if x is not None and y:
                values.append(x / y)
        out[key] = median(values)
    return out


def gains(runs, baseline: str, target: float, best_level: float) -> dict[str, dict]:
    """Speed-ups (> 1 is faster): concurrency = baseline / service-no-asha, ASHA =
    service-no-asha / service, total = baseline / service."""
    def inverse(a, b):
        return {k: (1 / v if v else None)
                for k, v in per_round_ratios(runs, a, b, target, best_level).items()}

    out = {}
    if NO_ASHA in runs and baseline in runs:
        out["concurrency"] = inverse(NO_ASHA, baseline)
    if ASHA in runs and NO_ASHA in runs:
        out["asha"] = inverse(ASHA, NO_ASHA)
    if ASHA in runs and baseline in runs:
        out["total"] = inverse(ASHA, baseline)
    return out


def _rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# --- printing ---------------------------------------------------------------------------

def print_runs(runs, target: float, cpus: int) -> None:
    rows = []
    for name, results in runs.items():
        for r in results:
            wall = r["t1"] - r["t0"]
            rows.append([name, r["round"], "asha" if name in (ASHA, REUSE) else "none",
                         wall, time_to(r["history"], r["t0"], target), r["best_valid_acc"],
                         r["best_test_acc"], r["trials"], r["pruned"], r["epochs_trained"],
                         60 * r["epochs_trained"] / wall])
    print()
    print(table(["run", "round", "pruner", "wall s", f"s to valid_acc>={target}",
                 "best valid_acc", "best test_acc", "trials", "pruned", "epochs trained",
                 "epochs/min"], rows))
    print(NOT_MEASURED.format(cpus=cpus, startup=TPE_STARTUP_TRIALS - 1))


def print_curve(runs, levels: list[float]) -> list[list]:
    """Median seconds to a few levels, to show the curve and not one lucky point."""
    curve = [[name] + [median(t for t in (time_to(r["history"], r["t0"], lv) for r in rs)
                              if t is not None) for lv in levels]
             for name, rs in runs.items()]
    print()
    print(table(["run"] + [f"s to {lv}" for lv in levels], curve,
                title="median seconds until the best validation accuracy so far reaches "
                      "each level"))
    return curve


def print_gains(found: dict[str, dict], baseline: str, target: float, best_level: float,
                rounds: int) -> None:
    names = {"concurrency": f"concurrency: {baseline} -> {NO_ASHA}",
             "asha": f"ASHA: {NO_ASHA} -> {ASHA}", "total": f"total: {baseline} -> {ASHA}"}
    rows = [[names[k], g["to_target"], g["to_best_level"], g["whole_study"]]
            for k, g in found.items()]
    print()
    print(table(["gain (x faster, > 1 is a gain)", f"to {target}", f"to {best_level}",
                 "whole study"], rows,
                title=f"speed-ups, medians of per-round ratios over {rounds} round(s)"))


def print_configs(check: dict[str, Any]) -> None:
    numbers = check["trials_compared"]
    span = f"{numbers[0]}..{numbers[-1]}" if numbers else "none"
    verdict = "the same" if check["same"] else f"NOT the same ({len(check['mismatches'])} differ)"
    print(f"\nfirst configurations: Optuna trials {span} (TPE's start-up draws) of "
          f"{check['runs_compared']} runs, all variants and rounds, against "
          f"{check['reference']} round 1: {verdict}; later trials equal to the "
          f"reference's: {check['later_trials_equal']}")
    for m in check["mismatches"][:5]:
        print(f"  {m['run']} round {m['round']} trial {m['trial']}: {m['params']} "
              f"vs {m['reference']}")


# --- main -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None):
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, help="trial budget (quick 6, else 10)")
    p.add_argument("--epochs", type=int, help="epochs per trial (quick 2, else 4)")
    p.add_argument("--steps", type=int,
                   help="training.steps_per_epoch, batches per epoch (quick 6, else all)")
    p.add_argument("--image-size", type=int,
                   help="data.image_size (quick 16, else the demo's 32); digits are 8x8")
    p.add_argument("--concurrency", type=int, default=2, help="service: trials at once (2)")
    p.add_argument("--repeats", type=int,
                   help="rounds of all variants (quick 1, to stay near 4 minutes; else 2)")
    p.add_argument("--target", type=float, help="validation accuracy to reach (default: auto)")
    p.add_argument("--reuse", action="store_true",
                   help="also run the service with reuse_actors=True forced (run_study "
                        "already sets it: a check that it still does)")
    p.add_argument("--original-threads",
                   help="comma-separated torch thread counts for the original, 'default' = "
                        "torch's default (one per core); quick: 1, else default,1")
    p.add_argument("--warm", action="store_true",
                   help="the warm variant (bench.warm_vs_cold): a first study of "
                        "--first-trials, then warm-started vs cold studies of --trials")
    p.add_argument("--first-trials", type=int, default=10,
                   help="--warm: trials of the first study (10)")
    p.add_argument("--order", default=f"{ORIGINAL},{NO_ASHA},{ASHA}",
                   help=f"order of the variants in round 1, reversed in round 2, ... "
                        f"(default {ORIGINAL},{NO_ASHA},{ASHA}; {NO_ASHA}, if left out, "
                        f"runs right before {ASHA})")
    args = p.parse_args(argv)
    args.trials = args.trials or (6 if args.quick else 10)
    args.epochs = args.epochs or (2 if args.quick else 4)
    args.steps = args.steps or (6 if args.quick else None)
    args.image_size = args.image_size or (16 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 2)
    spec = args.original_threads or ("1" if args.quick else "default,1")
    args.thread_counts = [None if t.strip() == "default" else int(t) for t in spec.split(",")]
    args.order_list = run_order(args.order)
    return args


def study_configs(ws: Workspace, args, theme_id: int) -> dict[str, Any]:
    """The same configuration twice, ASHA on and off: nothing else differs."""
    asha = {"type": "asha", "metric": "valid_acc", "mode": "max", "grace_period": 1,
            "reduction_factor": 2}
    configs = {}
    for name, scheduler in ((ASHA, asha), (NO_ASHA, {"type": "none"})):
        training = {"num_epochs": args.epochs, "steps_per_epoch": args.steps}
        folder = ws.configs(
            name=f"configs-{name}",
            optuna_params={"study": {"n_trials": args.trials},
                           "base_params": {"training": training}},
            params={"data": {"image_size": args.image_size}},
            config={"max_concurrent_trials": args.concurrency,
                    "ray": {"num_cpus": args.concurrency},
                    "resources": {"cpu": 1, "gpu": 0}, "scheduler": scheduler})
        configs[name] = ws.load_config(folder, theme_id=theme_id)
    assert configs[NO_ASHA].infra.scheduler.type == "none"
    return configs


def measure(args) -> tuple[dict[str, list[dict]], dict[str, float]]:
    from tuning.study import prepare_study

    setup: dict[str, float] = {}
    with Workspace("tta", keep=args.keep) as ws:
        ws.setup_django()
        ws.warm_mlflow()
        theme = ws.demo_theme()
        configs = study_configs(ws, args, theme.id)
        with contextlib.redirect_stdout(io.StringIO()):
            plan = prepare_study(configs[ASHA], theme)
        # The same prepared data and study name; only the scheduler differs.
        plan_no_asha = dataclasses.replace(plan, config=configs[NO_ASHA])
        service = [(ASHA, lambda: run_service_study(plan, reuse_actors=None))]
        if args.reuse:
            service.append((REUSE, lambda: run_service_study(plan, reuse_actors=True)))
        variants = {ORIGINAL: original_variants(plan, args.trials, args.thread_counts),
                    NO_ASHA: [(NO_ASHA, lambda: run_service_study(plan_no_asha,
                                                                  reuse_actors=None))],
                    ASHA: service}
        try:
            if set(args.order_list) - {ORIGINAL}:
                setup["ray.init (not in the times)"] = start_ray(configs[ASHA])
            return run_rounds(variants, args.order_list, args.repeats), setup
        finally:
            stop_ray()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_logs()
    info = machine_info()
    if args.warm:
        return main_warm(args, info)
    print(f"bench.time_to_accuracy: demo digits at {args.image_size}px, {args.trials} trials "
          f"x {args.epochs} epochs (steps/epoch: {args.steps or 'all'}); service: "
          f"{args.concurrency} at once, without and with ASHA; {args.repeats} round(s), "
          f"order {','.join(args.order_list)} (reversed in even rounds)")
    print_machine(info)
    runs, setup = measure(args)
    # Other processes' load decides how far apart the rounds' seconds are: say it at both ends.
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load avg at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    bests = [r["best_valid_acc"] for rs in runs.values() for r in rs
             if r["best_valid_acc"] is not None]
    # Rounded down, so that a run whose best equals the level counts as reaching it.
    target = args.target if args.target is not None else _floor4(0.98 * min(bests))
    levels = sorted({_floor4(f * min(bests)) for f in (0.9, 0.95, 0.98, 1.0)})
    print_runs(runs, target, info["cpus_usable"])
    curve = print_curve(runs, levels)
    check = first_configs(runs, args.trials)
    print_configs(check)
    report(args, info, runs, setup, target, levels, curve, check)
    return 0


def main_warm(args, info) -> int:
    from bench import warm_vs_cold

    print(f"bench.time_to_accuracy --warm: demo digits at {args.image_size}px; a first "
          f"study of {args.first_trials} trials, then warm-started vs cold studies of "
          f"{args.trials} trials x {args.epochs} epochs (steps/epoch: {args.steps or 'all'}), "
          f"{args.concurrency} at once, no scheduler; {args.repeats} round(s)")
    print_machine(info)
    found = warm_vs_cold.measure(args)
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load avg at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    warm_vs_cold.report(args, info, found)
    return 0


def report(args, info, runs, setup, target, levels, curve, check) -> None:
    # The primary baseline is the original with 1 torch thread: its trials compute exactly
    # what the service's (1 thread each) compute, so all meet the target in the same
    # trial and epoch, and the ratio measures how trials are run. Another thread count
    # changes the float results, and a single lucky early epoch can then decide the
    # time to a target: those originals are compared too, but not as the headline.
    originals = [n for n in runs if n.startswith("original")]
    baseline = next((n for n in originals if n == "original (1 thread)"), originals[0]) \
        if originals else None
    best_level = levels[-1]
    comparisons = {f"{s} / {o}": per_round_ratios(runs, s, o, target, best_level)
                   for s in (NO_ASHA, ASHA, REUSE) if s in runs for o in originals}
    print()
    print(table(["ratio (lower is faster)", f"to {target}", f"to {best_level}", "whole study"],
                [[k, c["to_target"], c["to_best_level"], c["whole_study"]]
                 for k, c in comparisons.items()],
                title=f"medians of per-round ratios over {args.repeats} round(s)"))
    found = gains(runs, baseline, target, best_level)
    print_gains(found, baseline, target, best_level, args.repeats)
    headline = comparisons.get(f"{ASHA} / {baseline}", {})
    ratio, wall_ratio = headline.get("to_target"), headline.get("whole_study")
    reuse_ratio = comparisons.get(f"{REUSE} / {baseline}", {}).get("to_target")
    conc, asha = (found.get(k, {}).get("to_target") for k in ("concurrency", "asha"))
    print(f"\nratio service/{baseline} to valid_acc >= {target}: {_rounded(ratio, 3)} "
          f"(target <= {TARGET_RATIO}); whole-study wall ratio {_rounded(wall_ratio, 3)}; "
          f"concurrency gain {_rounded(conc, 3)}x, ASHA gain {_rounded(asha, 3)}x; "
          f"same first configurations: {check['same']}")
    emit_json(args, info, runs, setup, target, levels, curve, check, baseline=baseline,
              comparisons=comparisons, found=found, ratio=ratio, wall_ratio=wall_ratio,
              reuse_ratio=reuse_ratio)


def emit_json(args, info, runs, setup, target, levels, curve, check, *, baseline,
              comparisons, found, ratio, wall_ratio, reuse_ratio) -> None:
    def med(key):
        return {n: median(r[key] for r in rs if r[key] is not None) for n, rs in runs.items()}

    emit({"bench": "time_to_accuracy", "ratio": _rounded(ratio), "target": TARGET_RATIO,
          "met": bool(ratio is not None and ratio <= TARGET_RATIO),
          "ratio_meaning": "service / original (1 torch thread, the same per-trial numerics) "
                           "seconds until the best valid_acc so far >= target_acc; median "
                           "of per-round ratios",
          "concurrency_gain": _rounded(found.get("concurrency", {}).get("to_target")),
          "asha_gain": _rounded(found.get("asha", {}).get("to_target")),
          "same_first_configs": bool(check["same"]),
          "gains_meaning": "x faster to target_acc (> 1 is a gain): concurrency = original "
                           "(1 thread) / service-no-asha, asha = service-no-asha / service",
          "gains": found, "first_configs": check,
          "baseline": baseline, "comparisons": comparisons,
          "target_acc": target, "ratio_reuse_actors": reuse_ratio, "wall_ratio": wall_ratio,
          "best": {n: {"valid_acc": v, "test_acc": med("best_test_acc")[n]}
                   for n, v in med("best_valid_acc").items()},
          "wall_s": {n: median(r["t1"] - r["t0"] for r in rs) for n, rs in runs.items()},
          "pruned": med("pruned"), "epochs_trained": med("epochs_trained"),
          "runs": {n: [{"round": r["round"], "wall_s": r["t1"] - r["t0"],
                        "to_target_s": time_to(r["history"], r["t0"], target),
                        "best_valid_acc": r["best_valid_acc"], "pruned": r["pruned"]}
                       for r in rs] for n, rs in runs.items()},
          "curve_levels": levels, "curve_s": curve, "setup_s": setup,
          "not_measured": NOT_MEASURED.format(cpus=info["cpus_usable"],
                                              startup=TPE_STARTUP_TRIALS - 1),
          "trials": args.trials, "epochs": args.epochs, "steps_per_epoch": args.steps,
          "image_size": args.image_size, "repeats": args.repeats, "order": args.order_list,
          "concurrency": args.concurrency, "quick": args.quick, "machine": info})


if __name__ == "__main__":
    raise SystemExit(main())
