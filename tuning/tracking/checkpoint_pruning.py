"""Finished trials' Tune checkpoints go once their models are safely in MLflow.

A checkpoint holds the network and the optimizer's state (134 MB for ResNet18 with
Adam), so a study kept one per finished trial though each trial's model was already
logged: a 50-trial ResNet101 study kept about 34 GB. What stays: the best trial's
checkpoint (the held-out evaluation and the parent's copy read it at the end), and that
of every trial whose model is not in MLflow (stopped by the scheduler, failed, or not
logged under log_models best|none): nothing a user finished is lost.
`checkpoint.keep_finished: true` keeps them all.

During the study a checkpoint goes one experiment snapshot after its trial's end, not at
the end itself: a driver that dies before a snapshot has recorded the trial as ended
resumes that trial from its checkpoint.
"""

from __future__ import annotations

from tuning import storage
from tuning.tracking import output
from tuning.tracking.ledger import COMPLETE, StudyLedger, TrialRecord


class CheckpointPruner:
    def __init__(self, ledger: StudyLedger, storage_path: str):
        self.ledger = ledger
        self.storage_path = storage_path
        self._ended_in_last_snapshot: set[str] = set()
        self.removed = 0
        self.freed_bytes = 0

    def on_snapshot(self) -> None:
        """Tune is about to write a snapshot: what the one before recorded as ended can
        go; what this one records goes at the next."""
        self._remove(self._ended_in_last_snapshot)
        self._ended_in_last_snapshot = {r.ray_trial_id for r in self.ledger.trials.values()
                                        if removable(r)}

    def at_end(self) -> None:
        """After the study's end steps: every removable checkpoint but the best's."""
        self._remove(set(self.ledger.trials))
        if self.removed:
            output.say(f"removed {self.removed} finished trials' checkpoints "
                       f"({self.freed_bytes / 2**20:.0f} MiB) whose models are in MLflow; "
                       f"kept the best trial's.")

    def _remove(self, trial_ids: set[str]) -> None:
        best = self.ledger.best()
        for trial_id in sorted(trial_ids):
            record = self.ledger.get(trial_id)
            if record is None or record is best or not removable(record):
                continue
            try:
                self.freed_bytes += storage.remove_folder_on_storage(
                    self.storage_path, record.checkpoint_path)
            except OSError as exc:   # housekeeping: a study never fails on it
                output.warn(f"trial {record.number}'s checkpoint {record.checkpoint_path} "
                            f"was not removed ({exc}).")
                continue
            record.checkpoint_removed = True
            self.removed += 1


def removable(record: TrialRecord) -> bool:
    return (record.state == COMPLETE and record.model_uri is not None
            and record.checkpoint_path is not None and not record.checkpoint_removed)
