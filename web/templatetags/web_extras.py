"""Small display filters for the web UI's templates."""

from __future__ import annotations

import yaml
from django import template
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from tuning.states import StudyStatus, TrialState
from tuning.tracking.progress import format_duration

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """Seconds as H:MM:SS, as the driver's progress line shows them; empty for None."""
    return "" if seconds is None else format_duration(float(seconds))


@register.filter
def get_item(mapping, key):
    if not isinstance(mapping, dict):
        return ""
    return mapping.get(key, "")


@register.filter
def short_value(value) -> str:
    """A parameter or metric value, short: floats to 4 significant digits."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@register.simple_tag
def mlflow_run_url(experiment_id: str, run_id: str) -> str:
    if not (experiment_id and run_id):
        return ""
    return f"{settings.THEMETUNE_MLFLOW_UI_URL}/#/experiments/{experiment_id}/runs/{run_id}"


@register.simple_tag
def ray_job_url(job_id: str) -> str:
    return f"{settings.THEMETUNE_RAY_DASHBOARD_URL}/#/jobs/{job_id}" if job_id else ""


_STATUS = {
    StudyStatus.PENDING: _("pending"), StudyStatus.RUNNING: _("running"),
    StudyStatus.COMPLETED: _("completed"), StudyStatus.FAILED: _("failed"),
    StudyStatus.KILLED: _("killed"),
    TrialState.RUNNING: _("running"), TrialState.COMPLETE: _("complete"),
    TrialState.PRUNED: _("pruned"), TrialState.FAIL: _("failed"),
    TrialState.KILLED: _("killed"),
}


@register.filter
def status_label(status: str) -> str:
    """A study status or trial state, translated."""
    return _STATUS.get(status, status)


@register.filter
def as_yaml(data) -> str:
    if not data:
        return ""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()
