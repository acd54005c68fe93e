"""Writes. Every function takes keyword-only arguments and is named
<entity>_<action>. One module per domain:

- themes: import a theme (a folder, or the demo digits), delete it, its default params;
- studies: a study and its trials as their driver records them (data_access.recorder);
- launches: what the web UI's launcher notes about the studies it starts.
"""

from data_access.services.launches import (
    study_create_pending,
    study_mark_ended,
    study_prepare_resume,
    study_request_cancel,
    study_set_launched,
    study_set_run_dir,
)
from data_access.services.studies import (
    study_create,
    study_finish,
    study_set_evaluation,
    study_start_existing,
    trial_add_result,
    trial_finish,
    trial_start,
)
from data_access.services.themes import (
    IMAGE_EXTENSIONS,
    theme_delete,
    theme_import_demo,
    theme_import_folder,
    theme_set_default_params,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "study_create",
    "study_create_pending",
    "study_finish",
    "study_set_evaluation",
    "study_mark_ended",
    "study_prepare_resume",
    "study_request_cancel",
    "study_set_launched",
    "study_set_run_dir",
    "study_start_existing",
    "theme_delete",
    "theme_import_demo",
    "theme_import_folder",
    "theme_set_default_params",
    "trial_add_result",
    "trial_finish",
    "trial_start",
]
