"""Ctrl-C and `ray job stop` (SIGTERM) end a study cleanly: Tune stops its trials and
saves its state, then the driver marks open runs KILLED. A second signal stops at once.

Tune's own SIGINT handler only covers Ctrl-C and would hide from us that the study was
stopped; so it is turned off, and both signals go to Tune's other graceful-stop
signal, SIGUSR1, after noting that a stop was asked for.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class StudyInterrupted(KeyboardInterrupt):
    """A stop that arrived once the study had runs; `closed`: they were marked KILLED
    (False: the tracking server could not be reached, and they stay RUNNING)."""

    def __init__(self, *, closed: bool):
        super().__init__()
        self.closed = closed


class StopRequest:
    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread; nothing to install
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
        print(f"[themetune] {signal.Signals(signum).name} received: stopping the study "
              f"(running trials will be marked KILLED); send it again to stop at once.",
              file=sys.stderr, flush=True)
        if hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt
