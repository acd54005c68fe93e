"""The warm variant of bench.time_to_accuracy (`python -m bench.time_to_accuracy --warm`):
a first study on the demo digits theme, then a study warm-started from it
(`--warm-start study:<first>`: its finished trials given to TPE) against a cold one,
both with the same TPE seed, space, budget and prepared data.

Trials to target = the position, in Optuna's order among the study's new trials, of the
first trial whose value reaches the target (a study that never reaches it counts
n_trials + 1, and the table says so); seconds to target = from the study's start to
that trial's end. Two targets (unless --target): the first study's best value (`match`:
getting back to what the team already had; warm_vs_cold is measured on it) and 0.99 x
that, floored to 4 decimals (`near`, the only target before 2026-12-03 09:00: a cold
study's first random draw reached it in one of two rounds, so it measured the luck of
the first draws more than the searcher). warm_vs_cold = median over rounds of warm /
cold trials to target (target <= 0.5). Rounds alternate the order (warm, cold; then
cold, warm). The first study has a TPE seed of its own, and each round's warm and cold
studies share another (ROUND_SEED + round): with the first study's seed the cold study
would draw the first study's own configurations again, and the target (set by the best
of them) would favour it (2026-12-03: warm 10 trials without reaching 0.979, cold with
the first study's seed reached it).
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
MATCH, NEAR = "match", "near"   # the targets (targets())


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


def targets(first_best: float, given: float | None) -> dict[str, float]:
    """The levels a new study is timed to: `match`, the first study's best (what the team
    already had; the primary one), and `near`, 0.99 x that, floored to 4 decimals. A
    --target replaces both."""
    if given is not None:
        return {MATCH: given}
    return {MATCH: first_best, NEAR: math.floor(0.99 * first_best * 10000) / 10000}


def ratios(rounds, target: float, direction: str, n_trials: int) -> dict[str, Any]:
    """Per round warm / cold, in trials and in seconds to the target; their medians."""
    per_variant: dict[str, dict[int, tuple[int, float | None]]] = {WARM: {}, COLD: {}}
    for r in rounds:
        per_variant[r["variant"]][r["round"]] = to_target(r, target, direction, n_trials)
    pairs = [(per_variant[WARM][k], per_variant[COLD][k])
             for k in sorted(per_variant[WARM]) if k in per_variant[COLD]]
    trials = [w[0] / c[0] for w, c in pairs]
    seconds = [w[1] / c[1] for w, c in pairs if w[1] is not None and c[1]]
    return {"trials": median(trials), "seconds": median(seconds), "per_round": trials,
            "reached": {name: sum(t <= n_trials for t, _ in per_variant[name].values())
                        for name in (WARM, COLD)}}


def report(args, info, found: dict[str, Any]) -> None:
    first, direction = found["first"], found["direction"]
    levels = targets(first["best_value"], args.target)
    # Per round, per target: (trials, seconds) to it.
    reached = [{name: to_target(r, target, direction, args.trials)
                for name, target in levels.items()} for r in found["rounds"]]
    rows = []
    for r, to in zip(found["rounds"], reached):
        cells = []
        for trials, seconds in to.values():
            cells += [trials if trials <= args.trials else f"not reached ({args.trials})",
                      seconds]
        rows.append([r["round"], r["variant"], *cells, r["best_value"], r["t1"] - r["t0"]])
    headers = []
    for target in levels.values():
        headers += [f"trials to {target:.4f}", f"s to {target:.4f}"]
    print()
    print(table(["round", "study", *headers, f"best {found['metric']}", "wall s"], rows,
                title=f"warm (from the first study's {args.first_trials} trials) vs cold, "
                      f"same seed per round"))
    measured = {name: ratios(found["rounds"], target, direction, args.trials)
                for name, target in levels.items()}
    for name, target in levels.items():
        m = measured[name]
        print(f"\nwarm_vs_cold to {target:.4f} ({name}): {_round(m['trials'])} in trials "
              f"(median of {[round(x, 3) for x in m['per_round']]}), "
              f"{_round(m['seconds'])} in seconds; reached by warm in "
              f"{m['reached'][WARM]}, cold in {m['reached'][COLD]} of "
              f"{len(m['per_round'])} round(s)" + (f" (target <= {TARGET_RATIO})"
                                                     if name == MATCH else ""))
    bests = {name: [r["best_value"] for r in found["rounds"] if r["variant"] == name]
             for name in (WARM, COLD)}
    print(f"best {found['metric']} of a study, median over rounds: warm "
          f"{_round(median(bests[WARM]), 4)}, cold {_round(median(bests[COLD]), 4)}")
    ratio = measured[MATCH]["trials"]
    emit({"bench": "time_to_accuracy.warm", "warm_vs_cold": ratio, "target": TARGET_RATIO,
          "met": bool(ratio is not None and ratio <= TARGET_RATIO),
          "warm_vs_cold_seconds": measured[MATCH]["seconds"],
          "target_value": levels[MATCH], "by_target": {
              name: {"value": levels[name], **measured[name]} for name in levels},
          "metric": found["metric"], "first_best": first["best_value"],
          "first_wall_s": first["t1"] - first["t0"], "given": found["given"],
          "best_values": bests,
          "runs": [{"round": r["round"], "study": r["variant"], "to_target": to,
                    "best_value": r["best_value"], "wall_s": r["t1"] - r["t0"]}
                   for r, to in zip(found["rounds"], reached)],
          "setup_s": found["setup_s"], "first_trials": args.first_trials,
          "trials": args.trials, "epochs": args.epochs, "steps_per_epoch": args.steps,
          "image_size": args.image_size, "repeats": args.repeats,
          "concurrency": args.concurrency, "quick": args.quick, "machine": info})


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
