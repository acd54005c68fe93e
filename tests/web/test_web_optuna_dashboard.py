"""The study page links to the study in optuna-dashboard, only where one can show it."""

from __future__ import annotations

import optuna
import pytest
from django.urls import reverse

from data_access.models import TuningStudy

pytestmark = pytest.mark.django_db

DASHBOARD = "http://127.0.0.1:8080"


@pytest.fixture
def client_viewer(client, viewer):
    client.force_login(viewer)
    return client


def _stored_in(study_id: int, storage: str, name: str = "tiny") -> None:
    """The row as launch.py records a study run with --storage."""
    TuningStudy.objects.filter(id=study_id).update(optuna_storage=storage,
                                                   optuna_study_name=name)


def _page(client, study_id: int) -> str:
    return client.get(reverse("study_detail", args=[study_id])).content.decode()


def _sqlite_study(folder, name: str) -> tuple[str, int]:
    folder.mkdir(exist_ok=True)
    url = f"sqlite:///{folder / 'optuna.db'}"
    # Another study first, so that the id the link carries is not 1 by chance.
    optuna.create_study(storage=url, study_name="other")
    optuna.create_study(storage=url, study_name=name)
    return url, optuna.storages.RDBStorage(url).get_study_id_from_name(name)


def test_link_to_the_study_in_optuna_dashboard_only_when_it_is_set(
        client_viewer, theme, make_study, tmp_path, settings):
    url, optuna_id = _sqlite_study(tmp_path / "optuna", "tiny")
    study_id = make_study(theme)
    _stored_in(study_id, url)

    settings.THEMETUNE_OPTUNA_DASHBOARD_URL = ""
    assert 'id="optuna-dashboard"' not in _page(client_viewer, study_id)

    settings.THEMETUNE_OPTUNA_DASHBOARD_URL = DASHBOARD
    page = _page(client_viewer, study_id)
    assert optuna_id == 2
    assert f'href="{DASHBOARD}/dashboard/studies/{optuna_id}"' in page
    assert 'id="optuna-dashboard"' in page


def test_journal_storage_is_linked_too(client_viewer, theme, make_study, tmp_path, settings):
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path / "study.log"
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    optuna.create_study(storage=storage, study_name="other")
    optuna.create_study(storage=storage, study_name="tiny")
    optuna_id = storage.get_study_id_from_name("tiny")
    study_id = make_study(theme)
    settings.THEMETUNE_OPTUNA_DASHBOARD_URL = DASHBOARD
    for form in (f"journal:{path}", str(path)):  # the two forms --storage takes
        _stored_in(study_id, form)
        assert f"{DASHBOARD}/dashboard/studies/{optuna_id}" in _page(client_viewer, study_id)


@pytest.mark.parametrize("storage", [
    "",                                        # in memory
    "sqlite:///{tmp}/missing.db",              # never created (and a GET must not create it)
    "journal:{tmp}/missing.log",
    "sqlite:///{tmp}/optuna.db",               # the storage, but not this study (yet)
    "sqlite:///{tmp}/empty.db",                # not an Optuna storage: a warning, no link
    "postgresql://tuner:***@127.0.0.1:1/optuna",  # the row keeps no password
])
def test_no_link_when_the_study_cannot_be_found(client_viewer, theme, make_study, tmp_path,
                                                settings, storage):
    folder = tmp_path / "optuna"
    _sqlite_study(folder, "another")
    (folder / "empty.db").touch()
    study_id = make_study(theme)
    _stored_in(study_id, storage.format(tmp=folder))
    settings.THEMETUNE_OPTUNA_DASHBOARD_URL = DASHBOARD
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    page = _page(client_viewer, study_id)
    assert 'id="optuna-dashboard"' not in page and "/dashboard/studies/" not in page
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_a_study_without_storage_is_linked_with_its_metric_named(
        client_viewer, theme, make_study, tmp_path, settings):
    """What launch.py gives a study the web form starts (no --storage): a journal file of
    its own under ray.storage_path, which the page and optuna-dashboard read."""
    import optuna.distributions as od

    from tuning.optuna_adapter import StudySearch, study_storage
    from web.optuna_dashboard import _read_only_storage

    url, storage = study_storage(None, storage_path=str(tmp_path / "ray_results"),
                                 study_name="tiny", create=True)
    search = StudySearch(space={"x": od.FloatDistribution(0, 1)}, metric="valid_acc",
                         mode="max", sampler=optuna.samplers.TPESampler(seed=1),
                         study_name="tiny", storage=storage)
    search.describe_study({"theme_name": "digits"})
    study_id = make_study(theme)
    _stored_in(study_id, url)
    settings.THEMETUNE_OPTUNA_DASHBOARD_URL = DASHBOARD
    optuna_id = storage.get_study_id_from_name("tiny")
    assert f"{DASHBOARD}/dashboard/studies/{optuna_id}" in _page(client_viewer, study_id)
    read = optuna.load_study(study_name="tiny", storage=_read_only_storage(url))
    assert read.metric_names == ["valid_acc"] and read.user_attrs["theme_name"] == "digits"
