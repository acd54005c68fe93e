"""URL routes of the web UI and the admin.

Every route needs a login (LoginRequiredMiddleware) except those whose view is marked
login_not_required: the login page and the language switch. Launching and cancelling
also need a permission (see views/studies.py), and so does trying a theme's model
(views/models.py). tests/web walks every route to prove it.
"""

from csp.decorators import csp_update
from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import path
from django.views.generic import RedirectView
from django.views.i18n import set_language

from web.views import media, models, plots, studies, themes

# plotly.js writes style attributes and <style> rules while it draws: the plot pages,
# and only they, allow inline styles (scripts stay 'self' only, see settings).
plot_page = csp_update({"style-src": ["'unsafe-inline'"]})(plots.plot_page)

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="study_list"), name="home"),
    path("login/", auth_views.LoginView.as_view(template_name="web/login.html",
                                                redirect_authenticated_user=True),
         name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("i18n/setlang/", login_not_required(set_language), name="set_language"),
    path("themes/", themes.theme_list, name="theme_list"),
    path("themes/<int:theme_id>/", themes.theme_detail, name="theme_detail"),
    path("themes/<int:theme_id>/images/<int:image_id>/", themes.theme_image,
         name="theme_image"),
    path("themes/<int:theme_id>/try/", models.theme_try_model, name="theme_try_model"),
    path("studies/", studies.study_list, name="study_list"),
    path("studies/new/", studies.study_new, name="study_new"),
    path("studies/<int:study_id>/", studies.study_detail, name="study_detail"),
    path("studies/<int:study_id>/live/", studies.study_live, name="study_live"),
    path("studies/<int:study_id>/log/", studies.study_log, name="study_log"),
    path("studies/<int:study_id>/cancel/", studies.study_cancel, name="study_cancel"),
    path("studies/<int:study_id>/resume/", studies.study_resume, name="study_resume"),
    path("studies/<int:study_id>/try/", models.study_try_model, name="study_try_model"),
    path("studies/<int:study_id>/best-params.yaml", studies.best_params_download,
         name="best_params_download"),
    path("studies/<int:study_id>/apply-best/", studies.best_params_apply,
         name="best_params_apply"),
    path("studies/<int:study_id>/plots/<slug:kind>/", plot_page, name="study_plot"),
    path("studies/<int:study_id>/plots/<slug:kind>.json", plots.plot_data,
         name="study_plot_data"),
    path("admin/", admin.site.urls),
    # Theme images as the admin links them; behind the login like every page.
    path(f"{settings.MEDIA_URL.strip('/')}/<path:path>", media.serve_media, name="media"),
]
