"""Ctrl-C and `ray job stop` (SIGTERM) end a study cleanly: Tune stops its trials and
saves its state, then the driver marks open runs KILLED. A second signal stops at once.

Tune's own SIGINT handler only covers Ctrl-C and would hide from us that the study was
stopped; so it is turned off, and both signals go to Tune's other graceful-stop
signal, SIGUSR1, after noting that a stop was asked for. A cancel recorded in the
database (the web UI's) is turned into the same SIGINT by CancelWatch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from tuning.tracking import output


class StudyInterrupted(KeyboardInterrupt):
    """A stop that arrived once the study had runs; `closed`: they were marked KILLED
    (False: the tracking server could not be reached, and they stay RUNNING)."""

    def __init__(self, *, closed: bool):
        super().__init__()
        self.closed = closed


# Set once the running study's stop handler got its signal: a CancelWatch then sends no
# second SIGINT, which would turn the graceful stop into an immediate one.
_stop_signalled = threading.Event()


class StopRequest:
    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread; nothing to install
        _stop_signalled.clear()
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        _stop_signalled.set()
        print(f"[themetune] {signal.Signals(signum).name} received: stopping the study "
              f"(running trials will be marked KILLED); send it again to stop at once.",
              file=sys.stderr, flush=True)
        if hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt


# The points of run_study at which a cancel recorded for the study is looked for.
PHASE_RAY_STARTED = "ray started"
PHASE_STUDY_STARTED = "study started"


def accept_sigint() -> None:
    """Let SIGINT stop this process: a launcher that ran in the background (`&`) may
    have handed it down ignored, and a cancel is a SIGINT."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CancelWatch:
    """A cancel recorded for the study (by the web UI) stops it like a Ctrl-C, even one
    whose signal never arrived: the driver was not started yet, or could not be signalled.

    `check()` at each phase boundary raises KeyboardInterrupt; once the study's runs
    exist (PHASE_STUDY_STARTED), a thread looks every `interval_s` and sends SIGINT to
    this process unless one already arrived, so that the stop goes through the same
    graceful path as a Ctrl-C.
    `cancel_requested` None: nothing can cancel (a study run from the command line)."""

    def __init__(self, cancel_requested: Callable[[], bool] | None, *,
                 interval_s: float = 3.0):
        self._cancel_requested = cancel_requested
        self._interval_s = interval_s
        self._stopped = threading.Event()

    def check(self) -> None:
        if self._cancel_requested is not None and self._cancel_requested():
            output.warn("the study was cancelled: stopping.")
            raise KeyboardInterrupt

    def on_phase(self, phase: str) -> None:
        self.check()
        if phase == PHASE_STUDY_STARTED and self._cancel_requested is not None:
            threading.Thread(target=self._poll, name="themetune-cancel-watch",
                             daemon=True).start()

    def stop(self) -> None:
        """No SIGINT after this: the study has ended on its own."""
        self._stopped.set()

    def _poll(self) -> None:
        # A cancel is acted on at its second look: the canceller's own SIGINT, sent
        # right after it wrote the cancel, has had time to arrive; a second SIGINT
        # would stop the study at once instead of gracefully.
        seen = False
        while not self._stopped.wait(self._interval_s):
            try:
                requested = self._cancel_requested()
            except Exception as exc:  # noqa: BLE001 - the database may be down for now
                print(f"themetune: warning: could not look for a cancel: {exc}",
                      file=sys.stderr, flush=True)
                continue
            if requested and seen and not (self._stopped.is_set()
                                           or _stop_signalled.is_set()):
                os.kill(os.getpid(), signal.SIGINT)
                return
            seen = requested
