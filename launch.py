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


def warm_source_names(text: str) -> tuple[str, ...]:
    """An argparse type: --warm-start's comma-separated sources."""
    from tuning.warm_start.sources import parse_sources

    try:
        return parse_sources(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tuning.config.params import MAX_CONCURRENT_TRIALS, MAX_ID, MAX_TRIALS

    p = OneLineParser(prog="launch.py", description=__doc__.split("\n")[0])
    p.add_argument("--theme-id", type=whole_number(1, MAX_ID),
                   help="theme to tune (overrides data.theme_id)")
    p.add_argument("--n-trials", type=whole_number(1, MAX_TRIALS),
                   help="number of trials (overrides study.n_trials)")
    p.add_argument("--timeout", type=seconds, help="time budget in seconds (study.timeout)")
    p.add_argument("--storage", help="Optuna storage: sqlite:///optuna.db, postgresql://..., "
                                     "or journal:FILE, shared by launches of one study "
                                     "name (default: a journal file of this launch's own "
                                     "under ray.storage_path)")
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
    p.add_argument("--warm-start", type=warm_source_names, metavar="SOURCE[,SOURCE...]",
                   help="start from earlier trials: champion (the theme's champion's "
                        "parameters, tried first), study:<id> (a recorded study's finished "
                        "trials) or theme (every finished study of the theme)")
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


def read_warm_sources(names, config, theme, *, record_id: int | None = None,
                      resuming: bool = False) -> list:
    """The --warm-start sources, read from the database and the registry and checked:
    an unknown study, another theme's or metric's study, or an empty source is refused
    here, before the dry run ends."""
    if not names:
        return []
    from tuning.errors import ConfigError
    from tuning.warm_start import sources as warm

    if resuming:
        raise ConfigError("a resumed study keeps the earlier trials it started from.",
                          key=warm.OPTION, fix="drop --warm-start when resuming.")
    found = [_warm_source(name, config, theme, record_id) for name in names]
    for source in found:
        warm.check_source(source, theme_id=theme.id, theme_name=theme.name,
                          metric=config.study.metric, direction=config.study.direction)
    return found


def _warm_source(name: str, config, theme, record_id: int | None):
    from data_access import selectors
    from tuning.warm_start import sources as warm

    if name == warm.CHAMPION:
        return _champion_source(config, theme)
    if name == warm.THEME:
        return warm.Source(name, tuple(selectors.warm_start_theme_studies(
            theme_id=theme.id, exclude_id=record_id)))
    study = selectors.warm_start_study(study_id=warm.study_id(name))
    if study is None or study.id == record_id:
        raise warm.unknown_study(name, selectors.database_description())
    return warm.Source(name, (study,))


def _champion_source(config, theme):
    from data_access.selectors import warm_start_champion_study
    from tuning.errors import ConfigError
    from tuning.tracking import registry
    from tuning.warm_start import sources as warm

    model = registry.model_name(theme.name)
    found = registry.champion(
        tracking_uri=registry.tracking_uri(config.infra.mlflow.tracking_uri), name=model)
    if found is None:
        raise ConfigError(f"theme '{theme.name}' has no champion yet ({model} has no "
                          f"@{registry.CHAMPION} version).", key=warm.OPTION,
                          fix="drop champion from --warm-start until a study registers one.")
    study = warm_start_champion_study(model_name=model, version=found.version,
                                      run_id=found.run_id)
    if study is None:
        raise ConfigError(f"champion {model} version {found.version} was registered by no "
                          f"study of this database: its parameters are unknown here.",
                          key=warm.OPTION, fix="drop champion, or name the study it came "
                                               "from as study:<id>.")
    return warm.Source(warm.CHAMPION, (study,), champion=f"{model} version {found.version}")


def attach_warm_start(plan, sources: list) -> None:
    """What the sources carry into this study's space and theme, said line by line."""
    if not sources:
        return
    from tuning.warm_start.carry import plan_warm_start

    c = plan.config.study
    plan.warm_start = plan_warm_start(sources, distributions=plan.distributions,
                                      metric=c.metric, direction=c.direction,
                                      theme_hash=plan.theme_hash)
    for line in plan.warm_start.lines():
        print(line, flush=True)


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
    from tuning.recovery.lease import stale_after_s
    from tuning.storage import check_study_places

    check_resources(config.infra, file=str(files.config))
    # Checks that need neither torch, Optuna nor MLflow loaded: a mistake is told at once.
    check_study_places(config, study_name=study_name, storage_url=storage)
    stale_after_s()
    theme = load_theme(config.theme_id)
    check_record(record_id)   # before anything: the dry run refuses what the run would
    sources = read_warm_sources(args.warm_start, config, theme, record_id=record_id,
                                resuming=resume is not None)
    from tuning.study import prepare_study, run_study  # seconds of imports
    # The web UI's cancel, looked for at each phase: its SIGINT may never have arrived.
    watch = _cancel_watch(None if args.dry_run else record_id)
    watch.check()
    plan = prepare_study(config, theme, study_name=study_name, storage_url=storage,
                         dry_run=args.dry_run)
    attach_warm_start(plan, sources)
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
