"""The StudyRecorder that writes a study's progress to the Django database.

A study costs hours of compute; the database is only its record. So a write that
fails (server restarting, SQLite locked too long) does not stop the study: the event
is queued and retried, in order, on the next event and at study_finished. What is
still unwritten at the end is reported on stderr, never dropped silently.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db import DataError as DatabaseDataError

from data_access import services
from data_access.db import database_description
from tuning.processes import process_start_time
from tuning.redact import redact_text
from tuning.tracking.recording import (
    StudyEnd,
    StudyEvaluation,
    StudyStart,
    TrialEnd,
    TrialResult,
    TrialStart,
)

Event = StudyStart | TrialStart | TrialResult | TrialEnd | StudyEvaluation | StudyEnd

# Errors that a retry cannot fix: the event is counted as lost at once, so that it
# does not block every later event behind it.
_PERMANENT = (IntegrityError, DatabaseDataError)


class DjangoStudyRecorder:
    """StudyRecorder over data_access.services. Call from the driver only; the study's
    row id is in `study_id` once study_started has been written.

    With `study_id`, study_started fills in that existing row (a pending study that the
    web UI created before launching `launch.py --record-id N`) instead of creating one,
    so that the UI can follow the study it launched."""

    def __init__(self, *, stream: TextIO | None = None, study_id: int | None = None):
        self.study_id: int | None = None
        self._existing_id = study_id
        self._pending: list[Event] = []
        self._lost = 0
        self._failing = False
        self._last_error: DatabaseError | None = None
        self._stream = stream

    # -- StudyRecorder protocol

    def study_started(self, event: StudyStart) -> None:
        self._record(event)

    def trial_started(self, event: TrialStart) -> None:
        self._record(event)

    def trial_result(self, event: TrialResult) -> None:
        self._record(event)

    def trial_finished(self, event: TrialEnd) -> None:
        self._record(event)

    def study_evaluated(self, event: StudyEvaluation) -> None:
        self._record(event)

    def study_finished(self, event: StudyEnd) -> None:
        self._record(event)
        unwritten = len(self._pending) + self._lost
        if unwritten:
            self._warn(
                f"{unwritten} study event(s) were not written to database "
                f"{database_description()} (last error: {self._error_text()}); the "
                f"study's MLflow runs are not affected."
            )

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # -- internals

    def _record(self, event: Event) -> None:
        self._pending.append(event)
        self._flush()

    def _flush(self) -> None:
        if self._failing and not connection.in_atomic_block:
            # Drop a connection that the last error left broken, so Django opens a
            # fresh one; outside a transaction only, where closing loses nothing.
            connection.close_if_unusable_or_obsolete()
        while self._pending:
            event = self._pending[0]
            if self.study_id is None and not isinstance(event, StudyStart):
                # Its study row could not be written: nothing to attach this event to.
                self._pending.pop(0)
                self._lost += 1
                continue
            try:
                # One transaction (a savepoint inside a caller's) per event, so that a
                # failed write leaves the connection usable, PostgreSQL included.
                with transaction.atomic():
                    self._write(event)
            except _PERMANENT as exc:
                self._pending.pop(0)
                self._lost += 1
                self._last_error = exc
                self._warn(f"could not write {type(event).__name__} to the database, "
                           f"skipping it: {self._error_text()}")
                continue
            except DatabaseError as exc:
                self._last_error = exc
                if not self._failing:
                    self._failing = True
                    self._warn(
                        f"database {database_description()} refused a write "
                        f"({self._error_text()}); {len(self._pending)} event(s) queued, "
                        f"retrying on the next event."
                    )
                return
            self._pending.pop(0)
        self._failing = False

    def _write(self, event: Event) -> None:
        if isinstance(event, StudyStart):
            if self._existing_id is not None:
                self.study_id = services.study_start_existing(
                    study_id=self._existing_id, event=event, driver_pid=os.getpid(),
                    driver_start=process_start_time()).id
            else:
                self.study_id = services.study_create(theme_id=event.theme_id,
                                                      event=event).id
            return
        assert self.study_id is not None  # _flush skips events of an unwritten study
        if isinstance(event, TrialStart):
            services.trial_start(study_id=self.study_id, event=event)
        elif isinstance(event, TrialResult):
            services.trial_add_result(study_id=self.study_id, event=event)
        elif isinstance(event, TrialEnd):
            services.trial_finish(study_id=self.study_id, event=event)
        elif isinstance(event, StudyEvaluation):
            services.study_set_evaluation(study_id=self.study_id, event=event)
        elif isinstance(event, StudyEnd):
            services.study_finish(study_id=self.study_id, event=event)
        else:
            raise TypeError(f"not a study event: {event!r}")

    def _error_text(self) -> str:
        if self._last_error is None:
            return "none"
        text = str(self._last_error).strip().splitlines()
        return text[0] if text else type(self._last_error).__name__

    def _warn(self, message: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        # Driver errors can quote a database URL with its password.
        print(f"themetune: warning: {redact_text(message)}", file=stream, flush=True)


def cancel_watch(study_id: int | None, *, interval_s: float = 3.0):
    """A CancelWatch over the study's row, read every `interval_s` while the study runs:
    the web UI's cancel stops this driver even when its SIGINT was lost. One that never
    cancels without a row."""
    from data_access.services.launches import study_cancel_pending
    from tuning.recovery.interrupts import CancelWatch, accept_sigint

    if study_id is None:
        return CancelWatch(None)
    accept_sigint()
    return CancelWatch(lambda: _read_closing(study_cancel_pending, study_id),
                       interval_s=interval_s)


def _read_closing(read, study_id: int) -> bool:
    """The watch's own thread reads too: it must not leave a connection open."""
    try:
        return read(study_id=study_id)
    finally:
        if threading.current_thread() is not threading.main_thread():
            connection.close()


def mark_interrupted_before_start(study_id: int | None) -> None:
    """End the row KILLED when the driver stops before recording the study's start (a
    cancel or Ctrl-C then): nothing else would, the web UI's watchdog aside. An ended
    row (a command-line resume of a killed study) is left as it is."""
    if study_id is None:
        return
    try:
        services.study_mark_ended(study_id=study_id, status="killed",
                                  error="cancelled before the study started")
    except DatabaseError as exc:
        print(f"themetune: warning: could not mark study {study_id} killed in database "
              f"{database_description()}: {redact_text(str(exc))}", file=sys.stderr,
              flush=True)
