"""Serve plotly.js from the installed plotly package, as static/web/vendor/plotly.min.js.

The plots are drawn by the same plotly.js version that the plotly Python package (and so
Optuna's figures) was built for, with nothing fetched from the internet; collectstatic
copies it like any other static file.
"""

from __future__ import annotations

from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_PATH = "web/vendor/plotly.min.js"
_PACKAGE_DATA = Path(plotly.__file__).resolve().parent / "package_data"


def _storage() -> FileSystemStorage:
    storage = FileSystemStorage(location=str(_PACKAGE_DATA))
    # collectstatic copies the storage's "plotly.min.js" under this prefix.
    storage.prefix = str(Path(PLOTLY_STATIC_PATH).parent)
    return storage


class PlotlyJsFinder(BaseFinder):
    storage = _storage()

    def check(self, **kwargs):
        from django.core.checks import Error

        if not (_PACKAGE_DATA / "plotly.min.js").is_file():
            return [Error(f"plotly.min.js is missing from {_PACKAGE_DATA}.",
                          hint="reinstall the plotly package.", id="web.E001")]
        return []

    def find(self, path, find_all=False, **kwargs):
        if path != PLOTLY_STATIC_PATH:
            return [] if find_all else None
        found = str(_PACKAGE_DATA / "plotly.min.js")
        return [found] if find_all else found

    def list(self, ignore_patterns):
        yield "plotly.min.js", self.storage
