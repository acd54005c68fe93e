"""Plot pages; the figures come as JSON and are drawn by plotly.js in the browser."""

from __future__ import annotations

from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from data_access import selectors
from web.plots import KINDS, PlotUnavailable, figure_json
from web.views.common import study_or_404


def _kind(slug: str):
    kind = KINDS.get(slug)
    if kind is None:
        raise Http404("no such plot")
    return kind


@require_GET
def plot_page(request, study_id: int, kind: str):
    study = study_or_404(study_id)
    return render(request, "web/study_plot.html", {
        "study": study, "kind": _kind(kind),
        "plot_kinds": [(slug, k.title) for slug, k in KINDS.items()]})


@require_GET
def plot_data(request, study_id: int, kind: str):
    plot = _kind(kind)
    study = study_or_404(study_id)
    trials = selectors.trial_list(study_id=study_id)
    try:
        figure = figure_json(plot, study, trials)
    except PlotUnavailable as exc:
        return JsonResponse({"active": study.is_active, "message": exc.args[0]})
    # The figure is already JSON (plotly's encoder); wrap it without decoding it.
    body = f'{{"active": {"true" if study.is_active else "false"}, "figure": {figure}}}'
    return HttpResponse(body, content_type="application/json")
