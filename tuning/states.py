"""How a trial ended and where a study stands: one name for each, used alike in MLflow
tags, the database (data_access.models builds its choices from these), the web UI and
the progress line.

StrEnum members are their values: `TrialState.COMPLETE == "COMPLETE"`, and they go into
JSON, f-strings and database columns as plain strings.
"""

from __future__ import annotations

from enum import StrEnum


class TrialState(StrEnum):
    """Optuna's names, so that the database and Optuna's own record read alike. KILLED is
    ours: a trial stopped with its study (Optuna records it as FAIL)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    KILLED = "KILLED"


class StudyStatus(StrEnum):
    PENDING = "pending"      # recorded by the web UI, its driver not started yet
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"


# A trial in one of these has ended: it counts as done in a study's progress.
ENDED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.KILLED)
# A study in one of these has not ended: its driver is (about to be) running.
ACTIVE_STATUSES = (StudyStatus.PENDING, StudyStatus.RUNNING)
