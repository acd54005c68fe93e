"""The link from a study's page to the study in optuna-dashboard
(THEMETUNE_OPTUNA_DASHBOARD_URL), found by reading the study's Optuna storage without
changing it: a page view changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings

from data_access.selectors import StudyInfo
from tuning.storage import journal_path

log = logging.getLogger(__name__)


# (storage URL, study name) -> the study's id in its storage. An id never changes, and
# finding it costs a database connection or a journal file's replay: once per process.
_OPTUNA_STUDY_IDS: dict[tuple[str, str], int] = {}


def study_url(study: StudyInfo) -> str | None:
    """The study's page in the optuna-dashboard of OPTUNA_DASHBOARD_URL; None when none is
    set, or the study is in memory or in a storage that cannot be read from here."""
    base = settings.THEMETUNE_OPTUNA_DASHBOARD_URL
    if not (base and study.optuna_storage and study.optuna_study_name):
        return None
    key = (study.optuna_storage, study.optuna_study_name)
    if key not in _OPTUNA_STUDY_IDS:
        study_id = _optuna_study_id(*key)
        if study_id is None:
            return None
        _OPTUNA_STUDY_IDS[key] = study_id
    return f"{base}/dashboard/studies/{_OPTUNA_STUDY_IDS[key]}"


def _optuna_study_id(url: str, name: str) -> int | None:
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        storage = _read_only_storage(url)
        if storage is None:
            return None
        try:
            return storage.get_study_id_from_name(name)
        finally:
            engine = getattr(storage, "engine", None)  # an RDB storage's connection pool
            if engine is not None:
                engine.dispose()
    except KeyError:
        return None  # not created yet: the driver creates it just after the study's row
    except (OSError, ValueError, ImportError, SQLAlchemyError, StorageInternalError) as exc:
        log.warning("No optuna-dashboard link: cannot read Optuna storage %s: %s: %s",
                    url, type(exc).__name__, (str(exc).splitlines() or [""])[0])
        return None


def _read_only_storage(url: str):
    """The Optuna storage of a study's row, opened without creating anything: a page view
    changes nothing (tuning.optuna_adapter.open_storage would create a missing file or
    table, and importing it loads Ray)."""
    import optuna

    if "***@" in url:
        return None  # the row keeps the URL without its password
    journal = journal_path(url)
    if journal is not None:
        if not Path(journal).is_file():
            return None
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(journal))
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return None  # SQLite would create an empty database file
    kwargs = {}
    if url.startswith(("postgresql", "mysql")):
        kwargs["connect_args"] = {"connect_timeout": 3}  # a page waits on it
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=True,
                                      skip_compatibility_check=True)
