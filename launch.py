"""Tune a theme's image classifier on Ray Tune: the one entry point.

    python launch.py --theme-id 7
    ray job submit --working-dir . -- python launch.py --theme-id 7

Parsing and wiring only: configs -> theme (Django) -> data -> Ray Tune -> MLflow.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from tuning.errors import USER_ERROR_EXIT_CODE, Reported

REPO = Path(__file__).resolve().parent
CONFIGS = REPO / "configs"


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is a user error like any other: exit 2 and one line, not usage text."""

    def error(self, message: str):
        from tuning.redact import redact_text

        match = re.match(r"argument ([^:]+): (.*)", message)
        key, rule = (match.group(1).split("/")[-1], match.group(2)) if match else (None, message)
        where = f"key '{key}': " if key else ""
        print(redact_text(f"error: {self.prog}: {where}{rule}. Fix: see `python {self.prog} "
                          f"--help`."), file=sys.stderr)
        sys.exit(USER_ERROR_EXIT_CODE)


def whole_number(low: int, high: int):
    """An argparse type: an integer in [low, high]; 1e30 or 10**23 is refused, not
    carried into Ray, SQLite or Optuna where it overflows."""
    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d{1,19}\s*", text) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high} (got {text[:40]!r})")
        return int(text)
    return parse


def seconds(text: str) -> float:
    """An argparse type: a finite, positive number of seconds, at most MAX_TIMEOUT_SECONDS."""
    from tuning.config.params import MAX_TIMEOUT_SECONDS

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_SECONDS):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECONDS} "
            f"(got {text[:40]!r})")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tuning.config.params import MAX_CONCURRENT_TRIALS, MAX_ID, MAX_TRIALS

    p = OneLineParser(prog="launch.py", description=__doc__.split("\n")[0])
    p.add_argument("--theme-id", type=whole_number(1, MAX_ID),
                   help="theme to tune (overrides data.theme_id)")
    p.add_argument("--n-trials", type=whole_number(1, MAX_TRIALS),
                   help="number of trials (overrides study.n_trials)")
    p.add_argument("--timeout", type=seconds, help="time budget in seconds (study.timeout)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///optuna.db, postgresql://..., "
                                     "or journal:FILE; makes the study persistent")
    p.add_argument("--study-name", help="Optuna study name (default: study.name)")
    p.add_argument("--configs", type=Path, default=CONFIGS,
                   help="folder holding the four YAML files (default: configs/)")
    p.add_argument("--optuna-params", type=Path, help="optuna_params.yaml")
    p.add_argument("--params", type=Path, help="params.yaml")
    p.add_argument("--config", type=Path, help="config.yaml")
    p.add_argument("--augments", type=Path, help="augments.yaml")
    p.add_argument("--max-concurrent-trials", type=whole_number(1, MAX_CONCURRENT_TRIALS),
                   help="trials running at once")
    p.add_argument("--record-id", type=whole_number(1, MAX_ID),
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


def check_record(record_id: int | None) -> None:
    """--record-id names a study row that exists: else the run would fail after Ray
    and MLflow started, leaving a FAILED parent run."""
    if record_id is not None:
        from data_access.selectors import study_require

        study_require(study_id=record_id)


def make_recorder(record_id: int | None):
    from data_access.recorder import DjangoStudyRecorder

    return DjangoStudyRecorder(study_id=record_id) if record_id else DjangoStudyRecorder()


def _cancel_watch(record_id: int | None):
    from data_access.recorder import cancel_watch

    return cancel_watch(record_id)


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
            _end_pending_record(args.record_id)
        return 130


def _end_pending_record(record_id: int | None) -> None:
    """The web UI's pending row ends killed, as a study stopped later does."""
    if record_id is None or not _django_ready():
        return
    from data_access.recorder import mark_interrupted_before_start

    mark_interrupted_before_start(record_id)


def _django_ready() -> bool:
    from django.apps import apps

    return apps.ready


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
    from tuning.storage import check_study_places

    check_resources(config.infra, file=str(files.config))
    # Checks that need neither torch, Optuna nor MLflow loaded: a mistake is told at once.
    check_study_places(config, study_name=study_name, storage_url=storage)
    theme = load_theme(config.theme_id)
    check_record(record_id)   # before anything: the dry run refuses what the run would
    from tuning.study import prepare_study, run_study  # seconds of imports
    # The web UI's cancel, looked for at each phase: its SIGINT may never have arrived.
    watch = _cancel_watch(None if args.dry_run else record_id)
    watch.check()
    plan = prepare_study(config, theme, study_name=study_name, storage_url=storage,
                         dry_run=args.dry_run)
    watch.check()
    if args.dry_run:
        print_dry_run(plan)
        return 0
    try:
        outcome = run_study(plan, recorder=make_recorder(record_id),
                            ray_job_id=job_submission_id(), resume=resume,
                            on_phase=watch.on_phase)
    finally:
        watch.stop()
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
