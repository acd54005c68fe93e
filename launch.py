"""Tune a theme's image classifier on Ray Tune: the one entry point.

    python launch.py --theme-id 7
    ray job submit --working-dir . -- python launch.py --theme-id 7

Parsing and wiring only: configs -> theme (Django) -> data -> Ray Tune -> MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tuning.errors import Reported

REPO = Path(__file__).resolve().parent
CONFIGS = REPO / "configs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n")[0])
    p.add_argument("--theme-id", type=int, help="theme to tune (overrides data.theme_id)")
    p.add_argument("--n-trials", type=int, help="number of trials (overrides study.n_trials)")
    p.add_argument("--timeout", type=float, help="time budget in seconds (study.timeout)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///optuna.db, postgresql://..., "
                                     "or journal:FILE; makes the study persistent")
    p.add_argument("--study-name", help="Optuna study name (default: study.name)")
    p.add_argument("--configs", type=Path, default=CONFIGS,
                   help="folder holding the four YAML files (default: configs/)")
    p.add_argument("--optuna-params", type=Path, help="optuna_params.yaml")
    p.add_argument("--params", type=Path, help="params.yaml")
    p.add_argument("--config", type=Path, help="config.yaml")
    p.add_argument("--augments", type=Path, help="augments.yaml")
    p.add_argument("--max-concurrent-trials", type=int, help="trials running at once")
    p.add_argument("--record-id", type=int,
                   help="update this pending study record (the web UI makes one) instead "
                        "of creating a new one")
    p.add_argument("--resume", nargs="?", const="latest", metavar="EXPERIMENT_DIR",
                   help="continue a study whose driver died or was stopped, from the Tune "
                        "experiment folder it printed at start (default: the newest "
                        "unfinished one under ray.storage_path); it runs with the configs, "
                        "theme, storage and MLflow parent run it started with")
    p.add_argument("--dry-run", action="store_true",
                   help="validate configs, theme, data and resources; print the search "
                        "space; start neither Ray nor MLflow")
    return p.parse_args(argv)


def load_theme(theme_id: int):
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "web.settings")
    import django

    django.setup()
    from data_access.selectors import theme_get_spec

    return theme_get_spec(theme_id=theme_id)


def make_recorder(record_id: int | None):
    from data_access.recorder import DjangoStudyRecorder

    return DjangoStudyRecorder(study_id=record_id) if record_id else DjangoStudyRecorder()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except Reported as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from tuning.recovery.interrupts import StudyInterrupted

        if isinstance(exc, StudyInterrupted) and exc.closed:
            print("interrupted: running trials and the parent run were marked KILLED.",
                  file=sys.stderr)
        elif isinstance(exc, StudyInterrupted):
            print("interrupted: the MLflow tracking server could not be reached, so the "
                  "runs stay RUNNING; the --resume command above continues the study.",
                  file=sys.stderr)
        else:
            print("interrupted before the study started: nothing was recorded.",
                  file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from tuning.config import Overrides, load_study_config
    from tuning.tracking.report import print_dry_run, print_outcome

    files = _config_files(args)
    overrides = Overrides(theme_id=args.theme_id, n_trials=args.n_trials,
                          timeout=args.timeout, max_concurrent_trials=args.max_concurrent_trials)
    study_name, storage, record_id, resume = args.study_name, args.storage, args.record_id, None
    if args.resume is not None:
        from tuning.recovery import resume as resuming

        resume = resuming.request(
            args.resume, config_file=files.config, theme_id=args.theme_id, storage=storage,
            study_name=study_name, overrides={"n_trials": args.n_trials, "timeout": args.timeout,
                                              "max_concurrent_trials": args.max_concurrent_trials})
        files, overrides = resume.config_files(), resume.study_overrides()
        study_name, storage = resume.study_name, resume.storage_url
        record_id = record_id or resume.record_id
    config = load_study_config(files, overrides)
    from tuning.cluster import check_resources, job_submission_id
    from tuning.study import prepare_study, run_study

    check_resources(config.infra, file=str(files.config))
    plan = prepare_study(config, load_theme(config.theme_id), study_name=study_name,
                         storage_url=storage)
    if args.dry_run:
        print_dry_run(plan)
        return 0
    outcome = run_study(plan, recorder=make_recorder(record_id),
                        ray_job_id=job_submission_id(), resume=resume)
    print_outcome(plan, outcome)
    return 0


def _config_files(args: argparse.Namespace):
    from tuning.config import ConfigFiles

    defaults = ConfigFiles.in_folder(args.configs)
    return ConfigFiles(optuna_params=args.optuna_params or defaults.optuna_params,
                       params=args.params or defaults.params,
                       config=args.config or defaults.config,
                       augments=args.augments or defaults.augments)


if __name__ == "__main__":
    sys.exit(main())
