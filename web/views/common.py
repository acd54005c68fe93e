from __future__ import annotations

from django.http import Http404

from data_access import selectors
from data_access.selectors import StudyInfo, StudyNotFoundError
from web import launch


def study_or_404(study_id: int) -> StudyInfo:
    """The study, after noting an end its driver could not record (see launch)."""
    try:
        return launch.refresh_study(selectors.study_get(study_id=study_id))
    except StudyNotFoundError as exc:
        raise Http404(exc.one_line()) from exc
