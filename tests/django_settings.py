"""The settings of a test run: web/settings.py in `make web`'s development mode.

web/settings.py defaults to production (DEBUG off: HTTPS redirect, secure cookies,
collectstatic's manifest), which the test client and live server cannot use. pytest-django
loads settings before any conftest runs, so pyproject.toml points it here. The variable
stays set for the whole run: the child processes tests start (manage.py, launch.py)
run in the same mode, as they did when development was the default. Tests of production
set DJANGO_DEBUG=false in their subprocess's environment.
"""

import os

os.environ.setdefault("DJANGO_DEBUG", "true")

from web.settings import *  # noqa: E402,F401,F403

# Children started with a copy of os.environ load web.settings itself (this module
# is already loaded here, so changing the variable now changes nothing in this process).
os.environ["DJANGO_SETTINGS_MODULE"] = "web.settings"
