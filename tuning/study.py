"""Run one study: prepare once on the driver, tune on Ray, record to MLflow.

prepare_study() does everything a user error can fail (data, classes, batch sizes,
storage) before anything is created in MLflow or Ray, so a mistake leaves nothing
half-written. run_study() then owns the parent run from creation to its final status.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from tuning import storage
from tuning.config import StudyConfig
from tuning.config.params import REPORTED_METRICS, TrainingParams, selection_split
from tuning.config.search_space import describe, to_distributions
from tuning.data import PreprocessSettings, TrialData, prepare_data
from tuning.data.augment import AugmentSettings
from tuning.data.keys import theme_content_hash
from tuning.data.mode import DataMode, choose_mode
from tuning.data.shards import prepare_shards, shard_root
from tuning.data.theme import ThemeSpec
from tuning.errors import (
    ConfigError,
    MetricError,
    Reported,
    StorageError,
    StudyFailedError,
    ThemeError,
    ThemetuneError,
    TrackingLostError,
)
from tuning.optuna_adapter import StudySearch, check_existing_study, study_storage
from tuning.recovery import lease
from tuning.recovery import resume as resume_files
from tuning.recovery.interrupts import PHASE_RAY_STARTED, PHASE_STUDY_STARTED, StopRequest, StudyInterrupted
from tuning.tracking import datasets, evidence, names, output, registry, retrying, runs
from tuning.tracking.checkpoint_pruning import CheckpointPruner
from tuning.tracking.ledger import StudyLedger
from tuning.tracking.progress import ProgressDisplay
from tuning.tracking.recording import NullRecorder, StudyEnd, StudyEvaluation, StudyRecorder, StudyStart
from tuning.trial.pretrained import load_study_weights
from tuning.warm_start import carry
from tuning.warm_start.carry import WarmStart


@dataclass
class StudyPlan:
    config: StudyConfig
    theme: ThemeSpec
    data: TrialData
    study_name: str
    storage_url: str | None
    storage: optuna.storages.BaseStorage | None
    distributions: dict[str, Any]
    stored_trials: int = 0
    theme_hash: str = ""   # tuning.data.keys.theme_content_hash
    # ImageNet state dicts by architecture, for the trials that start pretrained
    imagenet_states: dict[str, Any] = field(default_factory=dict)
    # What --warm-start carries over (launch.attach_warm_start); None for a cold start.
    warm_start: WarmStart | None = None


@dataclass
class StudyOutcome:
    experiment_id: str
    parent_run_id: str
    status: str
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    best_run_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    registration: registry.Registration | None = None


def preprocess_settings(params: TrainingParams) -> PreprocessSettings:
    patch = params.preprocessing.patch
    brightness = params.preprocessing.brightness_correction
    split = params.data.split_ratio
    return PreprocessSettings(
        image_size=params.data.image_size, channels=params.data.channels,
        brightness=brightness.method if brightness.enabled else None,
        patch_size=patch.size if patch.enabled else None,
        patch_stride=(patch.stride or patch.size) if patch.enabled else None,
        split=(split.train, split.valid, split.test), seed=params.data.seed,
        skip_unreadable=params.data.skip_unreadable)


def augment_settings(config: StudyConfig) -> AugmentSettings | None:
    a = config.augments
    settings = AugmentSettings(horizontal_flip=a.horizontal_flip, vertical_flip=a.vertical_flip,
                               random_crop_padding=a.random_crop_padding,
                               brightness=a.brightness, contrast=a.contrast)
    return settings if a.enabled and settings.enabled else None


def _check_theme_fits(config: StudyConfig, theme: ThemeSpec) -> None:
    num_classes = config.params.model.num_classes
    if num_classes is not None and num_classes != theme.num_classes:
        raise ThemeError(
            f"model.num_classes is {num_classes} but theme '{theme.name}' has "
            f"{theme.num_classes} classes ({', '.join(theme.class_names)}).",
            file=str(config.files.optuna_params), key="base_params.model.num_classes",
            fix=f"set it to {theme.num_classes} or remove it (it defaults to the theme's).")
    if theme.num_classes < 2:
        raise ThemeError(f"theme '{theme.name}' has {theme.num_classes} class; "
                         f"a classifier needs at least 2.",
                         fix="import images of at least two classes.")


def _check_batch_sizes(config: StudyConfig, data: TrialData) -> None:
    n_train = len(data.train.labels)
    sizes = [config.params.training.batch_size]
    spec = config.space.get("training.batch_size")
    if spec is not None:
        sizes = [int(v) for v in spec.edge_values()]
    too_big = [s for s in sizes if s > n_train]
    if too_big:
        where = ("params_to_tune.training.batch_size" if spec is not None
                 else "training.batch_size")
        raise ConfigError(f"batch size {max(too_big)} is larger than the train split "
                          f"({n_train} images).", file=str(config.files.optuna_params),
                          key=where, fix=f"use batch sizes <= {n_train}.")


def prepare_study(config: StudyConfig, theme: ThemeSpec, *, study_name: str | None = None,
                  storage_url: str | None = None, progress=None,
                  dry_run: bool = False) -> StudyPlan:
    """Every check the run can fail on before anything is recorded. A dry run passes
    exactly what the run accepts, and creates nothing: a storage file or MLflow store
    that does not exist yet is only checked to be creatable. Ray starts here only for
    a real run that must build streaming shards (decoded by tasks across the cluster)."""
    names.check_study_theme(theme.name, theme.id)   # MLflow would refuse it at the end
    _check_theme_fits(config, theme)
    lease.stale_after_s()   # read only when a lease is found: a bad value is told now
    name = study_name or config.study.name
    storage.check_study_places(config, study_name=study_name, storage_url=storage_url)
    # An MLflow server that is down at start is a setup mistake (exit 2 now); one
    # that goes down mid-study is waited for (tracking.retrying).
    retrying.check_reachable(registry.tracking_uri(
        config.infra.mlflow.tracking_uri))
    progress = progress or output.say
    # Before the data: a missing weights file is the quicker mistake to report.
    imagenet_states = load_study_weights(config, progress=progress)
    settings = preprocess_settings(config.params)
    mode = data_mode(config, theme, settings)
    progress(f"data path: {mode.mode} ({mode.reason})")
    data = _prepare(config, theme, settings, mode, progress=progress, dry_run=dry_run)
    _check_batch_sizes(config, data)
    storage_url, optuna_storage = study_storage(
        storage_url, storage_path=config.infra.ray.storage_path, study_name=name,
        create=not dry_run)
    distributions = to_distributions(config.space)
    stored = check_existing_study(optuna_storage, name, direction=config.study.direction,
                                  distributions=distributions)
    # Said once every check has passed: a refused study prints its one error line alone.
    _say_if_test_split_selects(config)
    return StudyPlan(config=config, theme=theme, data=data, study_name=name,
                     storage_url=storage_url, storage=optuna_storage,
                     distributions=distributions,
                     stored_trials=stored, imagenet_states=imagenet_states,
                     theme_hash=theme_content_hash(theme))


SELECTION_TAG = "themetune.selection_split"
THEME_HASH_TAG = "themetune.theme_content_hash"
WARM_START_TAG = "themetune.warm_start"   # JSON: StudyStart.warm_start


def _say_if_test_split_selects(config: StudyConfig) -> None:
    metric = config.study.metric
    if selection_split(metric) == "test":
        output.warn(f"study.metric {metric} chooses the best trial on the test split: its "
                    f"test figures take part in the choice and are not held out (select on "
                    f"a valid_* metric to keep them held out).")


def data_mode(config: StudyConfig, theme: ThemeSpec, settings: PreprocessSettings) -> DataMode:
    side = settings.input_size
    return choose_mode(config.params.data.mode,
                       items=len(theme.samples) * settings.patches_per_image,
                       item_bytes=settings.channels * side * side,
                       gpu_per_trial=config.infra.resources.gpu)


def _prepare(config: StudyConfig, theme: ThemeSpec, settings: PreprocessSettings,
             mode: DataMode, *, progress, dry_run: bool) -> TrialData:
    if not mode.streaming:
        return prepare_data(theme, settings, cache_dir=Path(config.infra.cache_dir),
                            progress=progress, store=not dry_run)
    root = shard_root(config.infra.ray.storage_path, config.infra.cache_dir)
    if not dry_run:
        _start_ray(config)
    return prepare_shards(theme, settings, root=root, progress=progress, store=not dry_run,
                          use_ray=not dry_run)


def _parent_params(plan: StudyPlan) -> dict[str, Any]:
    c = plan.config
    params: dict[str, Any] = {
        "theme_id": plan.theme.id, "theme_name": plan.theme.name,
        "study_name": plan.study_name, "direction": c.study.direction,
        "metric": c.study.metric, "n_trials": c.study.n_trials, "timeout": c.study.timeout,
        "sampler": "TPESampler", "sampler_seed": c.sampler_seed,
        "storage": plan.storage_url or "in-memory",
        "max_concurrent_trials": c.infra.max_concurrent_trials,
        "resources_per_trial": c.infra.resources.model_dump(),
        "scheduler": c.infra.scheduler.model_dump() if c.infra.scheduler.type != "none" else "none",
        "n_train": len(plan.data.train.labels), "n_valid": len(plan.data.valid.labels),
        "n_test": len(plan.data.test.labels), "skipped_unreadable": len(plan.data.skipped),
        "data_mode": plan.data.mode,
    }
    for name, spec in describe(c.space).items():
        params[f"space.{name}"] = spec
    return params


def run_study(plan: StudyPlan, *, recorder: StudyRecorder | None = None,
              progress: ProgressDisplay | None = None, ray_job_id: str | None = None,
              trainable=None, resume: resume_files.ResumeInfo | None = None,
              on_phase=None) -> StudyOutcome:
    """Run the study; `trainable` replaces train_trial (benchmarks time the service
    around a trial of fixed work with it). With `resume`, continue a study whose driver
    died: its Tune experiment is restored and its MLflow parent run reopened.
    `on_phase(name)` is called once Ray is up and once the study's start is recorded
    (tuning.recovery.interrupts: a recorded cancel raises KeyboardInterrupt there)."""
    recorder = recorder or NullRecorder()
    on_phase = on_phase or (lambda phase: None)
    _start_ray(plan.config)
    on_phase(PHASE_RAY_STARTED)
    # One driver per experiment, taken before the parent run is opened or reopened: a
    # second driver is refused before it writes anything (tuning.recovery.lease).
    if resume is not None:
        experiment_path, held = resume.experiment_path, lease.acquire(resume.experiment_path)
    else:
        experiment_path, held = _lease_new_experiment(plan)
    try:
        study_runs = _open_parent_run(plan, resume)
        # The experiment path goes into the study's record at once; the resume hint only
        # once the experiment exists (saved by _build_tuner).
        run = _StudyRun(plan=plan, study_runs=study_runs, recorder=recorder, resume=resume,
                        experiment_path=experiment_path,
                        resumable=resume.experiment_path if resume else None)
        return _run_steps(run, ray_job_id=ray_job_id, progress=progress,
                          trainable=trainable, on_phase=on_phase)
    finally:
        held.release()


def _run_steps(run: "_StudyRun", *, ray_job_id, progress, trainable, on_phase) -> StudyOutcome:
    """From the study's recorded start to its end, whatever ends it."""
    from tuning.tracking.models_io import ModelLogger  # torch and MLflow's pyfunc: not for --dry-run

    plan = run.plan
    try:
        _record_start(run, ray_job_id)
        on_phase(PHASE_STUDY_STARTED)
        models = ModelLogger(plan=plan, preprocess=preprocess_settings(plan.config.params))
        outcome = (_finish_bookkeeping(run, models)
                   or _tune(run, models, progress=progress, trainable=trainable))
        resume_files.mark_finished(run.experiment_path)
        return outcome
    except lease.LeaseLostError:
        raise   # the driver that took the study over records its end, not this one
    except KeyboardInterrupt as exc:
        _print_resume_hint(run.resumable, "interrupted")
        # A stopped study closes what it can at once: no wait for an absent tracking
        # server, so that a second Ctrl-C is never needed (and one still stops at once).
        with retrying.without_waiting():
            closed = _end_study(run, status="KILLED", reason="interrupted",
                                trial_reason="study interrupted")
        raise StudyInterrupted(closed=closed) from exc
    except BaseException as exc:
        if not isinstance(exc, (ThemetuneError, StudyFailedError)):
            _print_resume_hint(run.resumable, "stopped by an error")
        reason = exc.one_line() if isinstance(exc, Reported) else repr(exc)
        _end_study(run, status="FAILED", reason=reason, trial_reason="study failed")
        raise


def _tune(run: "_StudyRun", models, *, progress, trainable) -> StudyOutcome:
    """The trials on Ray Tune (new, or the rest of a resumed study), then the end steps."""
    plan, study_runs = run.plan, run.study_runs
    searcher = _searcher(plan, study_runs.parent_run_id)
    searcher.describe_study({"theme_id": plan.theme.id, "theme_name": plan.theme.name,
                             **runs.study_links(study_runs)})
    run.callback = _callback(run, searcher, models, progress or ProgressDisplay())
    tuner = _build_tuner(run, searcher, trainable)
    output.say(f"Tune experiment {run.experiment_path}; if this driver dies, "
               f"continue with: {resume_files.resume_command(run.experiment_path)}")
    _fit(tuner)
    run.callback.close_open_trials(reason="study ended before the trial finished")
    lease.check_still_held(run.experiment_path)   # the end steps never run in two drivers
    return _finish_study(plan, study_runs, run.callback.ledger, models, run.recorder)


def _finish_bookkeeping(run: "_StudyRun", models) -> StudyOutcome | None:
    """A resumed study whose trials all ended before its driver died: only the end steps
    (best params, model, registry), without restoring Tune; None for any other study."""
    if run.resume is None:
        return None
    config = run.plan.config
    ledger = resume_files.decided_ledger(
        run.experiment_path, run.study_runs,
        StudyLedger(metric=config.study.metric, direction=config.study.direction,
                    n_trials=config.study.n_trials))
    if ledger is None:
        return None
    output.say(f"all {len(ledger.trials)} trials of {run.experiment_path} ended before its "
               f"driver died: finishing the study's bookkeeping, no trial runs again.")
    lease.check_still_held(run.experiment_path)
    return _finish_study(run.plan, run.study_runs, ledger, models, run.recorder)


@dataclass
class _StudyRun:
    """What the steps of one run_study share, and what its ending needs to close."""

    plan: StudyPlan
    study_runs: runs.MlflowStudy
    recorder: StudyRecorder
    resume: resume_files.ResumeInfo | None
    experiment_path: str
    resumable: str | None          # the experiment, once a resume could find it
    callback: Any = None           # the StudyCallback, once made


def _start_ray(config: StudyConfig) -> None:
    """Ray up, and the checks that need it; before anything is recorded."""
    from tuning.cluster import check_storage_reachable, check_trial_fits, ensure_ray, joins_a_cluster

    ensure_ray(config.infra.ray)
    check_trial_fits(config.infra.resources, local=not joins_a_cluster(config.infra.ray),
                     file=str(config.files.config))
    check_storage_reachable(config.infra.ray.storage_path, file=str(config.files.config))


def _open_parent_run(plan: StudyPlan, resume) -> runs.MlflowStudy:
    if resume is None:
        tracking_uri = registry.tracking_uri(plan.config.infra.mlflow.tracking_uri)
        study_runs = runs.open_study_runs(
            tracking_uri=tracking_uri, experiment_name=plan.theme.name,
            run_name=plan.config.run_name,
            tags={"themetune.theme_id": str(plan.theme.id),
                  "themetune.study_name": plan.study_name, "themetune.role": "parent"})
    else:
        tracking_uri = resume.tracking_uri
        study_runs = runs.reopen_study_runs(
            tracking_uri=tracking_uri, experiment_id=resume.experiment_id,
            parent_run_id=resume.parent_run_id)
    runs.use_datasets(study_runs, datasets.study_datasets(plan.theme, plan.theme_hash, plan.data))
    output.say(f"MLflow experiment '{plan.theme.name}' (id {study_runs.experiment_id}), "
               f"parent run {study_runs.parent_run_id} at {tracking_uri}")
    return study_runs


def _new_experiment_path(plan: StudyPlan) -> str:
    root = storage.storage_root(plan.config.infra.ray.storage_path)
    name = storage.experiment_folder_name(plan.study_name, f"{dt.datetime.now():%Y%m%d-%H%M%S}")
    return f"{root.rstrip('/')}/{name}"


def _lease_new_experiment(plan: StudyPlan) -> tuple[str, lease.StudyLease]:
    """A new experiment folder and its lease. Launches of one study name may share its
    Optuna study on purpose, but never a folder: one started in the same second as
    another gets the next free name."""
    base = _new_experiment_path(plan)
    for attempt in range(1, 10):
        path = base if attempt == 1 else f"{base}-{attempt}"
        if storage.exists(path):
            continue
        try:
            return path, lease.acquire(path, key="ray.storage_path")
        except lease.LeaseHeldError:
            continue  # another launch took this name between our look and our lease
    raise StorageError(f"no free experiment folder name after {base} (tried 9).",
                       file=str(plan.config.files.config), key="ray.storage_path",
                       fix="start the study again in a second.")


def _record_start(run: _StudyRun, ray_job_id: str | None) -> None:
    """The parent run's params and configs (or its resume count), and the DB record."""
    plan, config = run.plan, run.plan.config
    client, parent_id = run.study_runs.client, run.study_runs.parent_run_id
    if run.resume is None:
        runs.log_params(client, parent_id, _parent_params(plan))
        runs.set_tags(client, parent_id, {SELECTION_TAG: selection_split(config.study.metric),
                                          THEME_HASH_TAG: plan.theme_hash})
        if plan.warm_start is not None:
            runs.log_params(client, parent_id, {"warm_start": plan.warm_start.names()})
            runs.set_tags(client, parent_id,
                          {WARM_START_TAG: json.dumps(plan.warm_start.records())})
        for path in vars(config.files).values():
            runs.log_file(client, parent_id, Path(path), "configs")
        runs.log_yaml(client, parent_id, config.resolved(), "configs/resolved.yaml")
    else:
        run.resume.resumes += 1
        runs.set_tags(client, parent_id, {"themetune.resumes": str(run.resume.resumes)})
    run.recorder.study_started(StudyStart(
        theme_id=plan.theme.id, name=config.run_name, direction=config.study.direction,
        metric=config.study.metric, n_trials=config.study.n_trials,
        optuna_study_name=plan.study_name, optuna_storage=plan.storage_url,
        mlflow_experiment_id=run.study_runs.experiment_id, mlflow_parent_run_id=parent_id,
        resolved_config=config.resolved(), param_space=describe(config.space),
        ray_job_id=ray_job_id, experiment_path=run.experiment_path,
        theme_content_hash=plan.theme_hash, warm_start=_warm_start_record(run)))


def _warm_start_record(run: _StudyRun) -> list[dict[str, Any]] | None:
    """The sources, as the study started with them; a resumed one reads them back from
    its parent run, so that its record keeps them."""
    if run.plan.warm_start is not None:
        return run.plan.warm_start.records()
    if run.resume is None:
        return None
    tags = run.study_runs.client.get_run(run.study_runs.parent_run_id).data.tags
    return json.loads(tags[WARM_START_TAG]) if WARM_START_TAG in tags else None


def _searcher(plan: StudyPlan, parent_run_id: str) -> StudySearch:
    config = plan.config
    searcher = StudySearch(
        space=plan.distributions, metric=config.study.metric,
        mode="max" if config.study.direction == "maximize" else "min",
        sampler=optuna.samplers.TPESampler(seed=config.sampler_seed),
        study_name=plan.study_name, storage=plan.storage, origin=parent_run_id)
    if plan.warm_start is not None:
        # Given before Tune asks for a trial; once per Optuna study (carry.FROM_ATTR), and
        # a resumed driver's restored searcher replaces this in-memory study anyway.
        carry.give(searcher.study, plan.warm_start, plan.distributions)
    return searcher


def _callback(run: _StudyRun, searcher: StudySearch, models, progress: ProgressDisplay):
    from tuning.tracking.callbacks import StudyCallback

    config = run.plan.config
    ledger = StudyLedger(metric=config.study.metric, direction=config.study.direction,
                         n_trials=config.study.n_trials)
    log_each = models.log_trial_model if config.infra.mlflow.log_models == "all" else None
    return StudyCallback(ledger=ledger, mlflow_study=run.study_runs,
                         trial_number=searcher.trial_number, recorder=run.recorder,
                         progress=progress, log_model=log_each, searcher=searcher,
                         experiment_path=run.experiment_path)


def _trainable(plan: StudyPlan, trainable):
    from ray import tune

    from tuning.cluster import trial_resources
    from tuning.trial.trainable import TrialSettings, train_trial

    config = plan.config
    settings = TrialSettings(base=config.base, augments=augment_settings(config),
                             num_classes=plan.theme.num_classes,
                             in_channels=config.params.data.channels,
                             cpus=config.infra.resources.cpu,
                             memory_gb=config.infra.resources.memory_gb,
                             imagenet_states=plan.imagenet_states)
    return tune.with_resources(
        tune.with_parameters(trainable or train_trial, data=plan.data, settings=settings),
        trial_resources(config.infra.resources))


def _scheduler(config: StudyConfig):
    if config.infra.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = config.infra.scheduler
    return ASHAScheduler(metric=s.metric, mode=s.mode, max_t=config.params.training.num_epochs,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor,
                         time_attr="epoch")


def _build_tuner(run: _StudyRun, searcher: StudySearch, trainable):
    """A new Tune experiment (and the files a resume needs), or the one being resumed."""
    plan = run.plan
    trainable = _trainable(plan, trainable)
    scheduler = _scheduler(plan.config)
    if run.resume is not None:
        tuner = resume_files.restore_tuner(run.resume.experiment_path, trainable,
                                           searcher=searcher, scheduler=scheduler,
                                           callback=run.callback)
        run.resume.record_id = getattr(run.recorder, "study_id", None) or run.resume.record_id
        resume_files.update(run.resume)
        return tuner
    tuner = _new_tuner(plan, trainable, searcher, scheduler, run.callback, run.experiment_path)
    _save_resume_info(run)
    run.resumable = run.experiment_path
    return tuner


def _new_tuner(plan: StudyPlan, trainable, searcher, scheduler, callback, experiment_path: str):
    from ray import tune

    from tuning.tracking.callbacks import file_loggers

    config = plan.config
    storage_path, name = experiment_path.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=config.study.n_trials,
            max_concurrent_trials=config.infra.max_concurrent_trials,
            time_budget_s=config.study.timeout,
            # A fresh actor per trial costs ~8 s here (a new process imports torch and
            # fetches the data); reused, a trial starts in ~0.01 s (bench.overhead: ratio
            # 10.5 -> 1.8). Safe: a trial keeps no MLflow run or global state in its
            # worker; only the driver talks to MLflow.
            reuse_actors=True),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, verbose=0,
            # Tune's per-trial log files out: their copy at every snapshot grew with
            # the trials done (tuning.tracking.callbacks.file_loggers).
            callbacks=[callback, *file_loggers()],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=config.infra.checkpoint.num_to_keep),
            failure_config=tune.FailureConfig(max_failures=config.infra.failure.max_failures)))


def _save_resume_info(run: _StudyRun) -> None:
    plan, config = run.plan, run.plan.config
    resume_files.save(resume_files.ResumeInfo(
        experiment_path=run.experiment_path, parent_run_id=run.study_runs.parent_run_id,
        experiment_id=run.study_runs.experiment_id,
        tracking_uri=storage.absolute_url(
            registry.tracking_uri(config.infra.mlflow.tracking_uri)),
        study_name=plan.study_name, storage_url=plan.storage_url, theme_id=plan.theme.id,
        overrides={"n_trials": config.study.n_trials, "timeout": config.study.timeout,
                   "max_concurrent_trials": config.infra.max_concurrent_trials},
        record_id=getattr(run.recorder, "study_id", None)),
        {name: Path(path) for name, path in vars(config.files).items()})


def _fit(tuner) -> None:
    """Tune's run under our stop handler; a stop asked for ends as KeyboardInterrupt."""
    import logging

    from ray.tune.error import TuneError

    # fit() ends by reading each trial's result.json or progress.csv, which this
    # service no longer writes (tracking.callbacks.file_loggers): its warning per trial
    # would say nothing true. MLflow and the ledger hold every result.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    with StopRequest() as stop:
        try:
            tuner.fit()
        except TuneError as exc:
            # Tune hands on a callback's error as a TuneError holding only its text;
            # an MLflow outage that outlasted its budget is told as what it is.
            if retrying.outage_error() is not None:
                raise retrying.outage_error() from exc
            raise
    if stop.requested:
        raise KeyboardInterrupt


def _end_study(run: _StudyRun, *, status: str, reason: str, trial_reason: str) -> bool:
    """End the runs and the study record; False when MLflow could not be reached."""
    closed = _end_runs(run.callback, run.study_runs.client, run.study_runs.parent_run_id,
                       status, reason, trial_reason=trial_reason)
    run.recorder.study_finished(StudyEnd(status=status.lower(), best_value=None,
                                         best_params=None, best_trial_number=None,
                                         error=reason))
    return closed


def _end_runs(callback, client, parent_id: str, status: str, reason: str, *,
              trial_reason: str) -> bool:
    """Open child runs KILLED, the parent `status` with the reason as a tag; False when
    the tracking server could not be reached."""
    try:
        if callback is not None:
            callback.close_open_trials(reason=trial_reason)
        runs.set_tags(client, parent_id, {"themetune.end_reason": reason[:5000]})
        runs.end_run(client, parent_id, status)
    except TrackingLostError as lost:
        # MLflow is gone: its runs stay RUNNING, which is what --resume expects to find;
        # the study's own error is the one to raise, and the DB still hears of the end.
        output.warn(f"could not close the MLflow runs: {lost.message}")
        return False
    return True


def _print_resume_hint(experiment_path: str | None, what: str) -> None:
    if experiment_path is not None:
        output.warn(f"study {what}; continue it with: "
                    f"{resume_files.resume_command(experiment_path)}")


def _finish_study(plan: StudyPlan, study_runs: runs.MlflowStudy, ledger: StudyLedger,
                  models, recorder: StudyRecorder) -> StudyOutcome:
    config = plan.config
    client, parent_id = study_runs.client, study_runs.parent_run_id
    best = ledger.best()
    if best is None:
        counts = ledger.counts()
        # A metric that no finished trial reported, when they reported others, is a
        # config mistake; trials that were all stopped (by --timeout or the scheduler)
        # before their last epoch, or never started before --timeout, are not.
        stopped = counts["FAIL"] + counts["KILLED"] + counts["PRUNED"]
        if ledger.metrics_seen and config.study.metric not in ledger.metrics_seen \
                and not stopped:
            raise MetricError(
                f"metric {config.study.metric!r} was never reported; the trials reported: "
                f"{', '.join(sorted(ledger.metrics_seen))}.",
                file=str(config.files.optuna_params), key="study.metric",
                fix=f"use one of: {', '.join(REPORTED_METRICS)}.")
        errors = [r.error for r in ledger.trials.values() if r.error]
        raise StudyFailedError(
            f"no trial finished ({counts['FAIL']} failed, {counts['PRUNED']} pruned, "
            f"{counts['KILLED']} killed); first error: {errors[0] if errors else 'none'}.",
            fix="see the child runs' themetune.end_reason tags and `ray` logs.")

    evaluation = _evaluate_best(plan, best, study_runs, recorder)
    registration = _register(plan, best, models, parent_id, study_runs, evaluation)
    model_name, version = registration.model_name, registration.version
    runs.log_metric(client, parent_id, "best_value", best.value)
    runs.log_params(client, parent_id, {f"best.{k}": v for k, v in best.params.items()})
    runs.log_yaml(client, parent_id, {"trial_number": best.number,
                                      "value": best.value, "metric": config.study.metric,
                                      "params": best.params, "run_id": best.child_run_id},
                  "best_params.yaml")
    runs.set_tags(client, parent_id, {"best_trial_number": str(best.number),
                                      "best_run_id": best.child_run_id,
                                      "registered_model": f"{model_name}/{version}"})
    runs.end_run(client, parent_id, "FINISHED")
    recorder.study_finished(StudyEnd(status="completed", best_value=best.value,
                                     best_params=best.params, best_trial_number=best.number,
                                     registered_model=model_name, registered_version=version))
    if not config.infra.checkpoint.keep_finished:   # only once the study is recorded
        CheckpointPruner(ledger, config.infra.ray.storage_path).at_end()
    return StudyOutcome(experiment_id=study_runs.experiment_id, parent_run_id=parent_id,
                        status="completed", best_number=best.number, best_value=best.value,
                        best_params=best.params, best_run_id=best.child_run_id,
                        model_name=model_name, model_version=version, counts=ledger.counts(),
                        registration=registration)


def _evaluate_best(plan: StudyPlan, best, study_runs: runs.MlflowStudy,
                   recorder: StudyRecorder) -> StudyEvaluation | None:
    """The best trial's checkpoint scored once on the test split (tuning.evaluation.
    held_out), logged to the parent run and told to the recorder. A failure costs the
    study its evidence, not its model: it is said, and None returned."""
    from tuning.evaluation.held_out import evaluate_best, read_checkpoint  # torch

    if best.checkpoint_path is None:
        output.warn(f"trial {best.number} saved no checkpoint: no held-out evaluation.")
        return None
    started = time.monotonic()
    try:
        checkpoint = read_checkpoint(plan.config.infra.ray.storage_path, best.checkpoint_path)
        evaluation = evaluate_best(
            plan.data, plan.theme, trial_number=best.number, checkpoint=checkpoint,
            architecture=plan.config.trial_params(best.params).model.name)
    except Exception as exc:   # the study's model is still registered without it
        output.warn(f"held-out evaluation of trial {best.number} failed "
                    f"({type(exc).__name__}: {str(exc)[:300]}); the model is registered "
                    f"without test figures.")
        return None
    figures = ", ".join(f"{k} {v:.4f}" for k, v in evaluation.metrics.items())
    images = sum(map(sum, evaluation.confusion))
    output.say(f"held-out evaluation of trial {best.number} on the test split ({images} "
               f"images, {time.monotonic() - started:.1f} s): {figures}")
    evidence.log_evaluation(study_runs.client, study_runs.parent_run_id, evaluation,
                            timestamp_ms=int(time.time() * 1000))
    recorder.study_evaluated(evaluation)
    return evaluation


def _register(plan: StudyPlan, best, models, parent_id: str, study_runs: runs.MlflowStudy,
              evaluation: StudyEvaluation | None) -> registry.Registration:
    """Log the best model to the parent run, register it, and decide the champion: a
    champion trained on other theme content is first rescored on this study's images."""
    from tuning.tracking.model_package import description

    config = plan.config
    name = registry.model_name(plan.theme.name)
    best_uri, preprocessing = models.log_best(best, parent_run_id=parent_id)

    def rescore(version):
        from tuning.evaluation.rescoring import score_champion  # torch and MLflow's pyfunc

        return score_champion(f"models:/{name}/{version.version}",
                              tracking_uri=study_runs.client.tracking_uri,
                              metric=config.study.metric, data=plan.data, theme=plan.theme)

    registration = registry.register_best(
        study_runs.client, model_uri=best_uri, model_name=name,
        tags={"parent_run_id": parent_id, "best_run_id": best.child_run_id,
              "themetune.study_name": plan.study_name,
              "themetune.theme_id": str(plan.theme.id),
              "themetune.theme_name": plan.theme.name},
        description=description(plan.theme.class_names, preprocessing),
        metric=config.study.metric, direction=config.study.direction, value=best.value,
        theme_hash=plan.theme_hash, test_metrics=evaluation.metrics if evaluation else None,
        rescore=rescore)
    for line in registration.comparison:
        output.say(line)
    return registration
