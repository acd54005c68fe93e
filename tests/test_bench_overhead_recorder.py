"""bench.overhead's recorder wrapper passes on and times every recorder method (it
lacked study_evaluated once, and the benchmark died at its first study's end)."""

from __future__ import annotations

import time

from bench.overhead import TimedRecorder, Timeline
from tuning.tracking.recording import StudyRecorder


class SlowRecorder:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def record(event):
            time.sleep(0.01)
            self.calls.append((name, event))
        return record


def test_every_recorder_method_is_passed_on_and_timed():
    methods = [m for m in vars(StudyRecorder) if m.startswith(("study_", "trial_"))]
    assert "study_evaluated" in methods
    inner, timeline = SlowRecorder(), Timeline()
    timed = TimedRecorder(inner, timeline)
    for number, name in enumerate(methods):
        getattr(timed, name)(number)
    assert inner.calls == [(name, n) for n, name in enumerate(methods)]
    assert timeline.recorder_s >= 0.01 * len(methods)


def test_the_recorders_other_attributes_are_its_own():
    class WithId(SlowRecorder):
        study_id = 7

    timed = TimedRecorder(WithId(), Timeline())
    assert timed.study_id == 7
    assert getattr(TimedRecorder(object(), Timeline()), "study_id", None) is None
