"""URL routes. Only the admin for now; the web UI's views will be added here."""

from django.conf import settings
from django.conf.urls.static import static
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
]

# In development the admin shows theme images; a real deployment serves MEDIA_ROOT
# from the web server instead (static() returns nothing when DEBUG is false).
urlpatterns += static(settings.MEDIA_URL, document_root=settings.MEDIA_ROOT)
