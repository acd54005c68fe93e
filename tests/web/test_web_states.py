"""Every study status and trial state has a translated label in the web UI."""

from __future__ import annotations

import pytest
from django.utils import translation

from tuning.states import StudyStatus, TrialState
from web.templatetags.web_extras import status_label


@pytest.mark.parametrize("state", [*StudyStatus, *TrialState], ids=repr)
def test_every_state_has_a_label(state):
    with translation.override("ja"):
        assert str(status_label(state)) != state.value
