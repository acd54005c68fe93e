"""The database keeps the values of tuning.states: a changed state name needs a migration
(and a data migration for the rows that hold the old one)."""

from __future__ import annotations

from django.db.migrations.loader import MigrationLoader

from tuning.states import StudyStatus, TrialState


def _migrated_choices(model: str, field: str) -> list[str]:
    state = MigrationLoader(None, ignore_no_migrations=True).project_state()
    return [value for value, _ in state.models["data_access", model].fields[field].choices]


def test_the_migrated_choices_are_the_states_tuning_records():
    assert _migrated_choices("tuningstudy", "status") == [s.value for s in StudyStatus]
    assert _migrated_choices("tuningtrial", "state") == [s.value for s in TrialState]
