"""MEDIA_ROOT (theme images, as the admin links them), for logged-in users only."""

from __future__ import annotations

from django.conf import settings
from django.views.decorators.http import require_GET
from django.views.static import serve


@require_GET
def serve_media(request, path: str):
    # django.views.static.serve normalises the path and refuses any that leaves
    # document_root (safe_join), so "../" cannot reach outside MEDIA_ROOT.
    return serve(request, path, document_root=settings.MEDIA_ROOT)
