"""A finished study's Tune checkpoints go once their trials' models are in MLflow.

A checkpoint holds the network and the optimizer's state (134 MB for ResNet18 with
Adam), so a study kept one per finished trial though each trial's model was already
logged: a 50-trial ResNet101 study kept about 34 GB. At the study's end, after its
record and registration, what stays is the best trial's checkpoint and that of every
trial whose model is not in MLflow (stopped by the scheduler, failed, or not logged
under log_models best|none): nothing a user finished is lost.
`checkpoint.keep_finished: true` keeps them all.

Only at the end, not as trials end: a trial's end and Tune's next experiment snapshot
are not one step, and a driver that dies between them resumes the trial from its
checkpoint.
"""

from __future__ import annotations

from tuning import storage
from tuning.tracking import output
from tuning.tracking.ledger import COMPLETE, StudyLedger, TrialRecord


class CheckpointPruner:
    def __init__(self, ledger: StudyLedger, storage_path: str):
        self.ledger = ledger
        self.storage_path = storage_path
        self.removed = 0
        self.freed_bytes = 0

    def at_end(self) -> None:
        """Every removable checkpoint but the best trial's; says what went."""
        best = self.ledger.best()
        for record in self.ledger.trials.values():
            if record is not best and removable(record):
                self._remove(record)
        if self.removed:
            output.say(f"removed {self.removed} finished trials' checkpoints "
                       f"({self.freed_bytes / 2**20:.0f} MiB) whose models are in MLflow; "
                       f"kept the best trial's.")

    def _remove(self, record: TrialRecord) -> None:
        try:
            self.freed_bytes += storage.remove_folder_on_storage(
                self.storage_path, record.checkpoint_path)
        except OSError as exc:   # housekeeping: a finished study never fails on it
            output.warn(f"trial {record.number}'s checkpoint {record.checkpoint_path} "
                        f"was not removed ({exc}).")
            return
        record.checkpoint_removed = True
        self.removed += 1


def removable(record: TrialRecord) -> bool:
    return (record.state == COMPLETE and record.model_uri is not None
            and record.checkpoint_path is not None and not record.checkpoint_removed)
