"""Tune's trial folders in an experiment, on whatever storage holds it.

Tune names a trial's folder <trainable>_<trial id>_<index>_<params>_<time> and its
checkpoints checkpoint_000000, checkpoint_000001, ...: a resume finds a trial's newest
checkpoint by listing them, when the snapshot it restores names an older one.
"""

from __future__ import annotations

from tuning import storage


def _subfolders(experiment_path: str, folder: str | None = None) -> list:
    """The folders in `folder` (default: the experiment's own), on the experiment's storage."""
    import pyarrow.fs

    fs, root = storage.filesystem(experiment_path)
    return [i for i in fs.get_file_info(pyarrow.fs.FileSelector(folder or root))
            if i.type == pyarrow.fs.FileType.Directory]


def trial_folders(experiment_path: str) -> list[str]:
    return [i.path for i in _subfolders(experiment_path)]


def folder_of(folders: list[str], trial_id: str) -> str | None:
    return next((f for f in folders if f"_{trial_id}_" in f.rsplit("/", 1)[-1]), None)


def last_checkpoint(experiment_path: str, trial_folder: str) -> str | None:
    """The trial's newest checkpoint folder (its final one, for a trial that ended)."""
    names = sorted(i.path for i in _subfolders(experiment_path, trial_folder)
                   if i.base_name.startswith("checkpoint_"))
    return names[-1] if names else None


def final_checkpoint(experiment_path: str, trial_id: str) -> str | None:
    """The newest checkpoint of one trial, or None (no folder, no checkpoint yet)."""
    folder = folder_of(trial_folders(experiment_path), trial_id)
    return last_checkpoint(experiment_path, folder) if folder else None
