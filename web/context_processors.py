"""Values every page's layout needs: links to the MLflow UI and the Ray dashboard."""

from django.conf import settings


def links(request):
    return {
        "mlflow_ui_url": settings.THEMETUNE_MLFLOW_UI_URL,
        "ray_dashboard_url": settings.THEMETUNE_RAY_DASHBOARD_URL,
    }
