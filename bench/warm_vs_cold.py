"""The warm variant of bench.time_to_accuracy (`python -m bench.time_to_accuracy --warm`):
a first study on the demo digits theme, then a study warm-started from it
(`--warm-start study:<first>`: its finished trials given to TPE) against a cold one,
both with the same TPE seed, space, budget and prepared data.

Trials to target = the position, in Optuna's order among the study's new trials, of the
first trial whose value reaches the target (a study that never reaches it counts
n_trials + 1, and the table says so); seconds to target = from the study's start to
that trial's end. The target (unless --target) is 0.99 x the first study's best value,
floored to 4 decimals: what the first study found, nearly. warm_vs_cold = median over
rounds of warm / cold trials to target (target <= 0.5). Rounds alternate the order
(warm, cold; then cold, warm). The first study has a TPE seed of its own, and each
round's warm and cold studies share another (ROUND_SEED + round): with the first
study's seed the cold study would draw the first study's own configurations again,
and the target (set by the best of them) would favour it (2026-12-03: warm 10 trials
without reaching 0.979, cold with the first study's seed reached it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
from typing import Any

from bench.common import Workspace, emit, median, start_ray, stop_ray, table

TARGET_RATIO = 0.5
WARM, COLD = "warm", "cold"


def run_one(plan) -> dict[str, Any]:
    """One study with the DB recorder; its trials read back from their records."""
    from data_access.recorder import DjangoStudyRecorder
    from data_access.selectors import trial_list
    from tuning.study import run_study
    from tuning.tracking.progress import ProgressDisplay

    recorder = DjangoStudyRecorder()
    captured = io.StringIO()
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(captured):
            outcome = run_study(plan, recorder=recorder,
                                progress=ProgressDisplay(min_interval_s=3600))
    except BaseException:
        print(captured.getvalue()[-4000:])
        raise
    t1 = time.time()
    trials = [(t.number, t.value, t.ended_at.timestamp() if t.ended_at else None)
              for t in trial_list(study_id=recorder.study_id)]
    return {"t0": t0, "t1": t1, "study_id": recorder.study_id, "trials": trials,
            "best_value": outcome.best_value, "counts": outcome.counts}


def to_target(run: dict[str, Any], target: float, direction: str, n_trials: int
              ) -> tuple[int, float | None]:
    """(trials, seconds) until a new trial's value reaches the target."""
    reached = [(t, v, end) for t, v, end in sorted(run["trials"])
               if v is not None and (v >= target if direction == "maximize" else v <= target)]
    if not reached:
        return n_trials + 1, None
    first_new = min(t for t, _, _ in run["trials"])
    number = reached[0][0]
    ends = [end for _, _, end in reached if end is not None]
    return number - first_new + 1, (min(ends) - run["t0"]) if ends else None


FIRST_SEED = 1    # the first study's TPE seed
ROUND_SEED = 100  # round r's warm and cold studies share the TPE seed ROUND_SEED + r


def configs(ws: Workspace, args, theme_id: int, *, seed: int, n_trials: int):
    """The demo's space and data; `seed` is the TPE sampler's (study.seed)."""
    folder = ws.configs(
        name=f"configs-warm-{seed}",
        optuna_params={"study": {"n_trials": n_trials, "seed": seed},
                       "base_params": {"training": {"num_epochs": args.epochs,
                                                    "steps_per_epoch": args.steps}}},
        params={"data": {"image_size": args.image_size}},
        config={"max_concurrent_trials": args.concurrency, "ray": {"num_cpus": args.concurrency},
                "resources": {"cpu": 1, "gpu": 0}, "scheduler": {"type": "none"}})
    return ws.load_config(folder, theme_id=theme_id)


def measure(args) -> dict[str, Any]:
    import launch
    from tuning.study import prepare_study

    with Workspace("tta-warm", keep=args.keep) as ws:
        ws.setup_django()
        ws.warm_mlflow()
        theme = ws.demo_theme()
        first_config = configs(ws, args, theme.id, seed=FIRST_SEED,
                               n_trials=args.first_trials)
        with contextlib.redirect_stdout(io.StringIO()):
            plan = prepare_study(first_config, theme)
        try:
            setup_s = start_ray(first_config)
            first = run_one(plan)
            print(f"  first study: {first['t1'] - first['t0']:.1f} s, best "
                  f"{first_config.study.metric} {first['best_value']:.4f}", flush=True)
            rounds = []
            for r in range(args.repeats):
                # A seed of its own per round, not the first study's: with that one the
                # cold study would replay the first study trial for trial.
                second_config = configs(ws, args, theme.id, seed=ROUND_SEED + r,
                                        n_trials=args.trials)
                cold = dataclasses.replace(plan, config=second_config)
                warm = dataclasses.replace(plan, config=second_config)
                sources = launch.read_warm_sources((f"study:{first['study_id']}",),
                                                   second_config, theme)
                launch.attach_warm_start(warm, sources)
                plans = {WARM: warm, COLD: cold}
                for name in ((WARM, COLD) if r % 2 == 0 else (COLD, WARM)):
                    result = run_one(plans[name])
                    result.update(round=r + 1, variant=name)
                    rounds.append(result)
                    print(f"  round {r + 1} {name}: {result['t1'] - result['t0']:.1f} s, best "
                          f"{result['best_value']:.4f}", flush=True)
        finally:
            stop_ray()
    return {"first": first, "rounds": rounds, "setup_s": setup_s,
            "metric": second_config.study.metric, "direction": second_config.study.direction,
            "given": warm.warm_start.records()}


def report(args, info, found: dict[str, Any]) -> None:
    first, direction = found["first"], found["direction"]
    target = args.target if args.target is not None else \
        math.floor(0.99 * first["best_value"] * 10000) / 10000
    rows, per_variant = [], {WARM: [], COLD: []}
    for r in found["rounds"]:
        trials, seconds = to_target(r, target, direction, args.trials)
        per_variant[r["variant"]].append((trials, seconds))
        rows.append([r["round"], r["variant"], trials if trials <= args.trials else
                     f"not reached ({args.trials} run)", seconds, r["best_value"],
                     r["t1"] - r["t0"]])
    print()
    print(table(["round", "study", f"trials to {found['metric']}>={target}",
                 "s to target", "best value", "wall s"], rows,
                title=f"warm (from the first study's {args.first_trials} trials) vs cold, "
                      f"same seed"))
    pairs = list(zip(per_variant[WARM], per_variant[COLD]))
    ratio = median(w[0] / c[0] for w, c in pairs)
    seconds_ratio = median(w[1] / c[1] for w, c in pairs if w[1] is not None and c[1])
    print(f"\nwarm_vs_cold (warm / cold trials to {target}, median of {len(pairs)} "
          f"round(s)): {ratio if ratio is None else round(ratio, 3)} (target <= "
          f"{TARGET_RATIO}); in seconds: "
          f"{seconds_ratio if seconds_ratio is None else round(seconds_ratio, 3)}")
    emit({"bench": "time_to_accuracy.warm", "warm_vs_cold": ratio, "target": TARGET_RATIO,
          "met": bool(ratio is not None and ratio <= TARGET_RATIO),
          "warm_vs_cold_seconds": seconds_ratio, "target_value": target,
          "metric": found["metric"], "first_best": first["best_value"],
          "first_wall_s": first["t1"] - first["t0"], "given": found["given"],
          "runs": [{"round": r["round"], "study": r["variant"],
                    "trials_to_target": to_target(r, target, direction, args.trials)[0],
                    "s_to_target": to_target(r, target, direction, args.trials)[1],
                    "best_value": r["best_value"], "wall_s": r["t1"] - r["t0"]}
                   for r in found["rounds"]],
          "setup_s": found["setup_s"], "first_trials": args.first_trials,
          "trials": args.trials, "epochs": args.epochs, "steps_per_epoch": args.steps,
          "image_size": args.image_size, "repeats": args.repeats,
          "concurrency": args.concurrency, "quick": args.quick, "machine": info})
