"""Ray's OptunaSearch, adjusted to how a themetune trial reports, and Optuna storages.

Ray's OptunaSearch reads the study metric from every intermediate result, but a trial
reports the study metric (e.g. test_acc) only once, after its last epoch; and it only
logs a failed `tell` (e.g. NaN), which would leave the Optuna trial RUNNING forever.
Each epoch's validation metric is reported instead, and each trial carries its MLflow
run and Ray trial ids, so that optuna-dashboard reads a study as MLflow does.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch
from sqlalchemy.exc import SQLAlchemyError

from tuning.config.params import epoch_metric_for, is_final_result
from tuning.errors import StorageError
from tuning.numbers import is_finite_number
from tuning.redact import redact_text
from tuning.storage import (
    absolute_url,
    check_storage_url,
    experiment_folder_name,
    is_remote_storage,
    journal_path,
    local_storage_path,
)

# Set on each Optuna trial this searcher asks for: after a driver crash, the RUNNING
# trials carrying this study's parent run id, but unknown to the restored searcher,
# were asked after Tune's last snapshot and will never be told: they are closed as FAIL.
ORIGIN_ATTR = "themetune.parent_run_id"
# Where a trial's story continues: its MLflow child run and its Ray trial (the same ids
# as the child run's tags), for a reader of the study in optuna-dashboard.
MLFLOW_RUN_ATTR = "mlflow.run_id"
RAY_TRIAL_ATTR = "ray.trial_id"
# A RUNNING trial still without its Ray trial id this long after Optuna's ask lost its
# driver between the two (seen in the suite: a SIGKILL right after a trial's end).
UNTAGGED_AFTER_S = 10
# Study user attributes (describe_study): optuna-dashboard has no label for intermediate
# values, so the study says what they are.
INTERMEDIATE_ATTR = "intermediate_values"
# The folder under ray.storage_path of the journal files of studies without --storage.
JOURNAL_FOLDER = "themetune_optuna"


def _never_tagged(trial: optuna.trial.FrozenTrial) -> bool:
    """Asked by a driver killed before it tagged the trial (suggest tags it within
    milliseconds of Optuna's ask), not one that another live driver of a shared study
    is about to tag."""
    started = trial.datetime_start
    return (RAY_TRIAL_ATTR not in trial.user_attrs and started is not None
            and (dt.datetime.now() - started).total_seconds() > UNTAGGED_AFTER_S)


class StudySearch(OptunaSearch):
    def __init__(self, *args, origin: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # These are kept in Tune's searcher snapshots (OptunaSearch pickles __dict__).
        self.origin = origin  # the study's MLflow parent run id (ORIGIN_ATTR)
        # trial id -> (state, value) found already recorded when resuming (see decide).
        self.decided: dict[str, tuple[str, float | None]] = {}
        # trial id -> epochs reported to Optuna: a retried or resumed trial re-runs the
        # epochs after its checkpoint, and Optuna keeps a step's first value (and warns).
        self.reported_steps: dict[str, set[int]] = {}

    def describe_study(self, attrs: dict[str, Any]) -> None:
        """What optuna-dashboard shows of the study: the metric's name instead of
        "Objective 0", what an intermediate value is, and `attrs` (theme, MLflow run)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self.metric])
        attrs = {INTERMEDIATE_ATTR: f"{epoch_metric_for(self.metric)} after each epoch "
                                    f"(step = epoch)", **attrs}
        for key, value in attrs.items():
            self._ot_study.set_user_attr(key, value)

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            # The Ray trial id last: a trial that has it was tagged whole (_close_orphans).
            attrs = {ORIGIN_ATTR: self.origin} if self.origin else {}
            self.tag_trial(trial_id, {**attrs, RAY_TRIAL_ATTR: trial_id})
        return config

    def tag_trial(self, trial_id: str, attrs: dict[str, Any]) -> None:
        """Set user attributes on a Ray trial's Optuna trial while it is open."""
        def tag(trial: optuna.Trial) -> None:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        self._write_open_trial(trial_id, tag)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._close_orphans()

    def decide(self, trial_id: str, state: str, value: float | None) -> None:
        """A trial's outcome was recorded in MLflow after the snapshot Tune restored:
        when the resumed trial re-runs its last epochs, Optuna is told this outcome,
        so that Optuna and MLflow agree."""
        self.decided[trial_id] = (state, value if state == "COMPLETE" else None)

    def _close_orphans(self) -> None:
        """Optuna trials asked after the snapshot Tune restored hold no Ray trial any more."""
        if self.origin is None:
            return
        known = {t.number for t in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known and (trial.user_attrs.get(ORIGIN_ATTR) == self.origin
                                              or _never_tagged(trial)):
                self._ot_study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)

    def reserve_numbers(self, numbers: list[int]) -> None:
        """Make Optuna's next numbers come after `numbers` (trials of an in-memory study
        lost with a crashed driver, whose child runs still carry these numbers), so that
        no two trials of the study ever share a number."""
        if not numbers:
            return
        while len(self._ot_study.trials) <= max(numbers):
            self._ot_study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Intermediate values are for reading the study (optuna-dashboard plots them per
        # epoch); they prune nothing: Ray's pruner is a no-op, and early stopping is the
        # Ray scheduler's job.
        value = result.get(epoch_metric_for(self.metric))
        step = result.get("epoch", result.get("training_iteration"))
        if not is_finite_number(value) or not is_finite_number(step) or step < 0:
            return
        step = int(step)
        if step in self.reported_steps.get(trial_id, ()):
            return
        if self._write_open_trial(trial_id, lambda trial: trial.report(float(value), step)):
            self.reported_steps.setdefault(trial_id, set()).add(step)

    def _write_open_trial(self, trial_id: str, write: Callable[[optuna.Trial], None]) -> bool:
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials:
            return False
        try:
            write(trial)
        except UpdateFinishedTrialError:
            # Told in a persistent storage after the snapshot a resumed driver restored
            # (see decide): what the storage holds for it stands.
            return False
        return True

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        result = result or {}
        value = result.get(self.metric)
        decided = self.decided.pop(trial_id, None)
        if decided is not None:
            state, value = TrialState[decided[0]], decided[1]
        elif error:
            state, value = TrialState.FAIL, None
        elif not is_final_result(result):
            # Optuna then gives it its last intermediate value (the validation metric
            # where it stopped) as its value: never a test metric.
            state, value = TrialState.PRUNED, None
        elif not is_finite_number(value):
            state, value = TrialState.FAIL, None
        else:
            state = TrialState.COMPLETE
        # skip_if_finished: after a resume, a trial told just before the crash (in a
        # persistent storage) can complete a second time.
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state,
                            skip_if_finished=True)
        self._completed_trials.add(trial_id)
        self.reported_steps.pop(trial_id, None)  # a told trial takes no more values

    def trial_number(self, trial_id: str) -> int:
        """Optuna's number for a Ray trial: the n in the child run name `trial_{n}`."""
        return self._ot_trials[trial_id].number

    @property
    def study(self) -> optuna.Study:
        return self._ot_study


def study_storage(url: str | None, *, storage_path: str, study_name: str, create: bool
                  ) -> tuple[str | None, optuna.storages.BaseStorage | None]:
    """A study's Optuna storage: --storage when given, else a journal file of its own
    (default_journal_url), so that every study can be read in optuna-dashboard and
    resumed with its per-epoch values. Returns (URL, storage); a dry run makes nothing."""
    if url is None:
        url = default_journal_url(storage_path, study_name, create=create)
        if url is not None and not create:
            return url, None   # its folder is made by the run; a dry run makes nothing
    return url, open_storage(url, create=create)


def default_journal_url(storage_path: str, study_name: str, *, create: bool) -> str | None:
    """`journal:<ray.storage_path>/themetune_optuna/<study>-<time>-<pid>.journal`: one
    Optuna study per launch, as the in-memory default was (a reused study name shares a
    study only through --storage), kept beside the study's Tune experiments. None (in
    memory) for remote storage, where Optuna's journal file cannot live."""
    if is_remote_storage(storage_path):
        return None
    folder = local_storage_path(storage_path) / JOURNAL_FOLDER
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot make the Optuna journal folder {folder}: "
                               f"{exc.strerror or exc}.", key="ray.storage_path",
                               fix="use a writable ray.storage_path, or pass --storage."
                               ) from None
    stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    return f"journal:{folder / experiment_folder_name(study_name, stamp)}.journal"


def open_storage(url: str | None, *, create: bool = True
                 ) -> optuna.storages.BaseStorage | None:
    """An Optuna storage for a URL: an RDB URL, or a journal file (`journal:PATH`, *.log).

    With create=False (a dry run) a SQLite or journal file that does not exist yet is
    not made: its folder is checked instead, and None stands for the empty storage."""
    file = check_storage_url(url)
    if url is None or (file is not None and not create and not file.exists()):
        return None
    if journal_path(url) is not None:
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(str(file)))
    # Absolute: Tune's snapshots pickle the storage, and a resumed driver may run from
    # another working directory.
    return _rdb_storage(absolute_url(url))


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    shown = redact_text(url)
    try:
        return optuna.storages.RDBStorage(url)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open storage {shown!r}: {redact_text(str(exc))}.",
                           key="--storage",
                           fix="check the URL and that its database driver is installed.") from None
    except SQLAlchemyError as exc:
        reason = redact_text(str(exc).splitlines()[0]) if str(exc) else ""
        raise StorageError(f"cannot open storage {shown!r}: {type(exc).__name__}: {reason}.",
                           key="--storage",
                           fix="check the URL, the server and its credentials.") from None


def check_existing_study(storage: optuna.storages.BaseStorage | None, study_name: str, *,
                         direction: str, distributions: dict[str, Any]) -> int:
    """Refuse to continue a stored study with another direction or space.

    Ray creates the study with load_if_exists=True, so without this check a reused name
    silently mixes two different studies. Returns the number of trials already stored.
    """
    if storage is None:
        return 0
    try:
        existing = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    if len(existing.directions) != 1 or existing.direction.name.lower() != direction:
        stored = ", ".join(d.name.lower() for d in existing.directions)
        raise StorageError(
            f"study {study_name!r} exists with direction {stored}, but the config asks "
            f"for {direction}.", key="study.direction",
            fix="use another --study-name, or the stored direction.")
    for trial in existing.get_trials(deepcopy=False):
        if trial.distributions and trial.distributions != distributions:
            raise StorageError(
                f"study {study_name!r} exists with another search space "
                f"(stored: {sorted(trial.distributions)}; asked: {sorted(distributions)}).",
                key="params_to_tune",
                fix="use another --study-name, or the stored search space.")
    return len(existing.trials)
