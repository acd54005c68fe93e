"""What `launch.py --resume` needs to continue a study after its driver died.

When a study starts, a small JSON file and a copy of the four config files go into
Tune's experiment folder, next to Tune's own state (tuner.pkl, experiment_state-*.json,
searcher and callback snapshots). Resuming reads them back: the same configs, theme,
Optuna study and storage, and the same MLflow parent run, then continues through
`Tuner.restore`. Keeping them in the experiment folder means that whatever reaches
Tune's storage (a local folder, NFS, s3://) carries everything a resume needs.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuning import storage
from tuning.errors import ResumeError
from tuning.recovery import lease, trial_folders
from tuning.storage import absolute_url
from tuning.tracking import registry
from tuning.tracking.ledger import COMPLETE, FINAL_STATES, TrialRecord

RESUME_FILE = "themetune_resume.json"
CONFIG_COPY = "themetune_configs"
FORMAT_VERSION = 1
CONFIG_NAMES = ("optuna_params", "params", "config", "augments")


@dataclass
class ResumeInfo:
    experiment_path: str          # Tune's experiment folder (local path or URI)
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    study_name: str
    storage_url: str | None       # as the user gave it; None = in memory
    theme_id: int
    overrides: dict[str, Any]     # CLI overrides the study started with
    record_id: int | None = None  # the study's row in the Django DB, once written
    started_at: str = field(default_factory=lambda: dt.datetime.now().isoformat())
    finished: bool = False
    resumes: int = 0
    version: int = FORMAT_VERSION

    def config_folder(self) -> Path:
        """The config copies, as local files (downloaded first from s3:// and the like)."""
        if not storage.is_remote_storage(self.experiment_path):
            return Path(self.experiment_path) / CONFIG_COPY
        local = Path(tempfile.mkdtemp(prefix="themetune-resume-"))
        for name in CONFIG_NAMES:
            (local / f"{name}.yaml").write_bytes(
                storage.read_bytes(f"{self.experiment_path}/{CONFIG_COPY}/{name}.yaml"))
        return local

    def config_files(self):
        from tuning.config import ConfigFiles

        return ConfigFiles.in_folder(self.config_folder())

    def study_overrides(self):
        from tuning.config import Overrides

        return Overrides(theme_id=self.theme_id, **self.overrides)


def resume_command(experiment_path: str) -> str:
    return f"python launch.py --resume {shlex.quote(str(experiment_path))}"


def save(info: ResumeInfo, config_files: dict[str, Path]) -> None:
    """Write the resume file and the config copies."""
    storage.make_folder(f"{info.experiment_path}/{CONFIG_COPY}")
    for name in CONFIG_NAMES:
        target = f"{info.experiment_path}/{CONFIG_COPY}/{name}.yaml"
        if not storage.exists(target):
            storage.write_bytes(target, Path(config_files[name]).read_bytes())
    update(info)


def update(info: ResumeInfo) -> None:
    storage.write_bytes(f"{info.experiment_path}/{RESUME_FILE}",
           json.dumps(asdict(info), indent=2).encode("utf-8"))


def why_not_resumable(experiment_path: str) -> str | None:
    """None when `launch.py --resume experiment_path` can be tried, else why not. Cheap
    (one small file, no Ray import), for a UI that asks per page view; launch.py checks
    the rest (Tune's own state) and says so if it is missing."""
    if not experiment_path:
        return "the study never reached Ray Tune"
    try:
        if not storage.exists(f"{experiment_path.rstrip('/')}/{RESUME_FILE}"):
            return f"{experiment_path} holds no {RESUME_FILE}"
        data = json.loads(storage.read_bytes(f"{experiment_path.rstrip('/')}/{RESUME_FILE}").decode("utf-8"))
    except (OSError, ValueError) as exc:
        return f"{experiment_path} cannot be read ({exc})"
    if data.get("finished"):
        return "the study already finished"
    return None


def load(path: str | Path) -> ResumeInfo:
    folder = str(path).rstrip("/")
    if not storage.is_remote_storage(folder):
        folder = str(Path(folder.removeprefix("file://")).expanduser().resolve())
    meta = f"{folder}/{RESUME_FILE}"
    if not storage.exists(folder):
        raise ResumeError(f"experiment folder {folder} does not exist.", key="--resume",
                          fix="pass the folder printed when the study started "
                              "(under ray.storage_path).")
    if not storage.exists(meta):
        raise ResumeError(f"{folder} is not a themetune experiment folder (no {RESUME_FILE}).",
                          key="--resume",
                          fix="pass the folder printed when the study started "
                              "(under ray.storage_path).")
    try:
        data = json.loads(storage.read_bytes(meta).decode("utf-8"))
        data["experiment_path"] = folder  # the folder may have moved since
        info = ResumeInfo(**data)
    except (ValueError, TypeError) as exc:
        raise ResumeError(f"{meta} is unreadable ({exc}).", key="--resume",
                          fix="resume another experiment folder, or start a new study.") from None
    if info.finished:
        raise ResumeError(f"the study in {folder} already finished (MLflow parent run "
                          f"{info.parent_run_id}).", key="--resume",
                          fix="start a new study instead of resuming this one.")
    from ray.tune import Tuner

    if not Tuner.can_restore(folder):
        raise ResumeError(f"{folder} holds no Ray Tune state to restore (the driver died "
                          f"before Tune saved any).", key="--resume",
                          fix="start the study again without --resume.")
    return info


def latest(storage_path: str, study_name: str | None) -> Path:
    """The newest unfinished themetune experiment under Tune's storage path."""
    if storage.is_remote_storage(storage_path):
        raise ResumeError(f"--resume without a folder looks only in local folders, and "
                          f"ray.storage_path is {storage_path}.", key="--resume",
                          fix="pass the experiment URI printed when the study started.")
    root = Path(storage_path.removeprefix("file://")).expanduser().resolve()
    found: list[tuple[float, Path]] = []
    if root.is_dir():
        for meta in root.glob(f"*/{RESUME_FILE}"):
            try:
                data = json.loads(meta.read_text(encoding="utf-8"))
            except ValueError:
                continue  # a foreign or damaged file: not one to resume by default
            if data.get("finished") or (study_name and data.get("study_name") != study_name):
                continue
            found.append((meta.stat().st_mtime, meta.parent))
    if not found:
        which = f" of study {study_name!r}" if study_name else ""
        raise ResumeError(f"no unfinished experiment{which} under {root}.", key="--resume",
                          fix="pass the experiment folder printed when the study started.")
    return max(found)[1]


def check_same(info: ResumeInfo, *, theme_id: int | None, storage: str | None,
               study_name: str | None, overrides: dict[str, Any]) -> None:
    """A resume continues the study as it started: refuse CLI values that differ."""
    given = {"--theme-id": (theme_id, info.theme_id),
             "--storage": (absolute_url(storage), absolute_url(info.storage_url)),
             "--study-name": (study_name, info.study_name)}
    for name, value in overrides.items():
        given[f"--{name.replace('_', '-')}"] = (value, info.overrides.get(name))
    for flag, (new, old) in given.items():
        if new is not None and new != old:
            raise ResumeError(f"{flag} {new} differs from the study's {old}; a resumed study "
                              f"runs exactly as it started.", key=flag,
                              fix=f"leave {flag} out (or start a new study).")
    env_uri = registry.tracking_uri_from_env()
    if env_uri and absolute_url(env_uri) != info.tracking_uri:
        raise ResumeError(f"{registry.TRACKING_URI_ENV} is {env_uri} but the study logs to "
                          f"{info.tracking_uri}.", key=registry.TRACKING_URI_ENV,
                          fix=f"unset it or set it to {info.tracking_uri}.")


def mark_finished(experiment_path: str) -> None:
    """The study ended and its model is registered: a later --resume is refused."""
    info = ResumeInfo(**json.loads(storage.read_bytes(f"{experiment_path}/{RESUME_FILE}").decode("utf-8")))
    info.finished = True
    update(info)


def restore_tuner(experiment_path: str, trainable, *, searcher, scheduler, callback):
    """Tuner.restore, with this driver's searcher, scheduler and callback in place of
    the copies pickled when the study started.

    Tune unpickles those copies from tuner.pkl, but they hold the dead driver's
    recorder, MLflow client and progress display; ours get the saved searcher and
    callback state (Tune calls their restore/set_state), so the same objects that
    run_study reads afterwards are the ones Tune drives. Errored trials stay failed
    (resume_errored=False): their end was recorded; unfinished ones continue from their
    last checkpoint.
    """
    from ray import tune

    # Ray-heavy, like ray above: this module stays cheap for the web's resumable check.
    from tuning.tracking.callbacks import file_loggers

    tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True,
                               resume_errored=False, restart_errored=False)
    # Ray has no public way to swap these on restore (Tuner.restore takes only the
    # trainable and param_space); fail loudly if its internals move.
    internal = getattr(tuner, "_local_tuner", None)
    if internal is None or not hasattr(internal, "_tune_config"):
        raise RuntimeError("this Ray version's Tuner has no _local_tuner._tune_config; "
                           "tuning/recovery/resume.py:restore_tuner needs updating")
    internal._tune_config.search_alg = searcher
    internal._tune_config.scheduler = scheduler
    internal._run_config.callbacks = [callback, *file_loggers()]
    return tuner


def request(value: str, *, config_file: Path, theme_id: int | None, storage: str | None,
            study_name: str | None, overrides: dict[str, Any]) -> ResumeInfo:
    """What `--resume [EXPERIMENT_DIR]` asks for, checked against the other flags
    (`overrides`: n_trials, timeout, max_concurrent_trials as given, None if not)."""
    if value == "latest":
        from tuning.config import load_infra_config

        value = str(latest(load_infra_config(config_file).ray.storage_path, study_name))
    info = load(value)
    check_same(info, theme_id=theme_id, storage=storage, study_name=study_name,
               overrides=overrides)
    # Refused here, before the data and Ray, so that a second driver learns of the live
    # one at once; run_study takes the lease itself (lease.acquire).
    lease.check_free(info.experiment_path)
    return info


def decided_ledger(experiment_path: str, study_runs, ledger):
    """`ledger` filled with the study's trials when every one of them ended before its
    driver died (it died in the bookkeeping after them: best model, registry); None when
    a trial is left to run, or a finished one's folder cannot be found.

    Read from MLflow's child runs (how each trial ended, its value, its logged model)
    and the trial folders (params.json, checkpoints), without restoring the Tuner:
    restored, Tune would start again each trial that its last snapshot (which may
    predate the trial) did not see end.
    """
    # MLflow-heavy: this module stays cheap for the web's resumable check.
    from tuning.tracking import runs

    children = runs.child_runs(study_runs)
    decided = [r for r in children if r.info.status != "RUNNING"
               and r.data.tags.get("optuna.trial_state") in FINAL_STATES]
    if len(decided) < max(ledger.n_trials, len(children)):
        return None
    folders = trial_folders.trial_folders(experiment_path)
    for run in decided:
        record = _decided_record(run, experiment_path, folders, ledger.metric, study_runs)
        if record is None:
            return None
        ledger.add(record)
        ledger.metrics_seen |= set(run.data.metrics)
    return ledger


def _decided_record(run, experiment_path: str, folders: list[str], metric: str, study_runs):
    """A ledger record of a trial that ended, from its child run and its trial folder
    (Tune names it <trainable>_<trial id>_...; its params.json holds the typed params)."""
    # MLflow- and Ray-heavy: this module stays cheap for the web's resumable check.
    from tuning.tracking import runs
    from tuning.tracking.callbacks import END_REASON

    tags = run.data.tags
    trial_id, complete = tags.get("ray.trial_id", ""), tags["optuna.trial_state"] == COMPLETE
    folder = trial_folders.folder_of(folders, trial_id)
    checkpoint = (trial_folders.last_checkpoint(experiment_path, folder)
                  if folder and complete else None)
    if complete and checkpoint is None:
        return None  # no model to take from it: Tune's restore decides
    params = (json.loads(storage.read_on_storage(experiment_path, f"{folder}/params.json"))
              if folder else dict(run.data.params))   # only shown, for a trial that failed
    return TrialRecord(
        ray_trial_id=trial_id, number=int(tags.get("optuna.trial_number", -1)), params=params,
        started=run.info.start_time / 1000, ended=(run.info.end_time or 0) / 1000 or None,
        state=tags["optuna.trial_state"], child_run_id=run.info.run_id,
        value=run.data.metrics.get(metric) if complete else None, error=tags.get(END_REASON),
        checkpoint_path=checkpoint,
        model_uri=(runs.logged_model_uri(study_runs.client, study_runs.experiment_id,
                                         run.info.run_id) if complete else None))
