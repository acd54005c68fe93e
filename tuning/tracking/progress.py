"""A one-line progress display for long studies: it works in a terminal, in `ray job
logs` and in a CI log alike, so it prints lines rather than redrawing the screen."""

from __future__ import annotations

import time
from typing import TextIO

from tuning.tracking import output
from tuning.tracking.ledger import COMPLETE, FAIL, KILLED, PRUNED, RUNNING, StudyLedger


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def progress_line(ledger: StudyLedger, now: float | None = None) -> str:
    now = time.time() if now is None else now
    counts = ledger.counts()
    done = counts[COMPLETE] + counts[PRUNED] + counts[FAIL] + counts[KILLED]
    pending = max(ledger.n_trials - done - counts[RUNNING], 0)
    parts = [f"trials {done}/{ledger.n_trials} done",
             f"{counts[RUNNING]} running", f"{pending} pending"]
    if counts[PRUNED] or counts[FAIL]:
        parts.append(f"{counts[PRUNED]} pruned, {counts[FAIL]} failed")
    best = ledger.best()
    if best is not None:
        parts.append(f"best {ledger.metric}={best.value:.4f} (trial {best.number})")
    elapsed = now - ledger.started
    parts.append(f"elapsed {format_duration(elapsed)}")
    if 0 < done < ledger.n_trials:
        parts.append(f"~{format_duration(elapsed / done * (ledger.n_trials - done))} left")
    return "[themetune] " + " | ".join(parts)


class ProgressDisplay:
    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 10.0):
        # None means "sys.stdout at print time": Tune pickles its callbacks, and a
        # stream object (e.g. pytest's capture) may not pickle.
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._last_print = 0.0
        self._last_line = ""

    def update(self, ledger: StudyLedger, *, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_print < self.min_interval_s:
            return
        line = progress_line(ledger, now)
        if line == self._last_line:
            return
        if self.stream is None:
            output.say(line.removeprefix("[themetune] "))
        else:
            print(line, file=self.stream, flush=True)
        self._last_line = line
        self._last_print = now
