from __future__ import annotations

from django.http import Http404

from data_access import selectors
from data_access.selectors import StudyInfo
from tuning.errors import StudyNotFoundError


def study_or_404(study_id: int) -> StudyInfo:
    """The study as recorded. Read only: a page view never changes a study nor signals
    its process; `manage.py watch_studies` notices a driver that died."""
    try:
        return selectors.study_get(study_id=study_id)
    except StudyNotFoundError as exc:
        raise Http404(exc.one_line()) from exc
