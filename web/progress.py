"""A study's progress, as the progress bar shows it: trials done of the total, elapsed
time and an estimate of the time left (elapsed per finished trial, times those left)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from data_access.selectors import StudyInfo, TrialInfo
from tuning.states import ENDED_STATES, StudyStatus, TrialState


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    running: int
    complete: int
    pruned: int
    failed: int
    percent: int
    elapsed_s: float | None
    remaining_s: float | None


def study_progress(study: StudyInfo, trials: list[TrialInfo], now: datetime) -> Progress:
    states = [t.state for t in trials]
    done = sum(states.count(s) for s in ENDED_STATES)
    total = max(study.n_trials, 1)
    # A completed study is done even when its timeout ended it before n_trials.
    percent = 100 if study.status == StudyStatus.COMPLETED else min(100, done * 100 // total)
    start = study.started_at or (study.created_at if study.is_active else None)
    end = study.ended_at or (now if study.is_active else None)
    elapsed = (end - start).total_seconds() if start and end else None
    remaining = None
    if study.is_active and elapsed is not None and 0 < done < total:
        remaining = elapsed / done * (total - done)
    return Progress(total=study.n_trials, done=done, running=states.count(TrialState.RUNNING),
                    complete=states.count(TrialState.COMPLETE),
                    pruned=states.count(TrialState.PRUNED),
                    failed=states.count(TrialState.FAIL) + states.count(TrialState.KILLED),
                    percent=percent, elapsed_s=elapsed, remaining_s=remaining)


def trial_duration(trial: TrialInfo, now: datetime) -> float | None:
    if trial.started_at is None:
        return None
    return ((trial.ended_at or now) - trial.started_at).total_seconds()
