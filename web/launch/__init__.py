"""Start, follow and stop the studies that the web UI launches.

- start: a new study, or one resumed where it stopped, as a local background process
  (local.py) or a Ray job (ray_jobs.py), the same `launch.py` a user runs;
- follow: notice a driver that ended without recording it, cancel, read the output.
"""

from web.launch.follow import cancel_study, log_tail, refresh_active, refresh_study
from web.launch.start import (
    LOG_NAME,
    LaunchError,
    backend,
    child_database_url,
    launch_new_study,
    resume_command,
    resume_study,
    run_dir,
)

__all__ = [
    "LOG_NAME",
    "LaunchError",
    "backend",
    "cancel_study",
    "child_database_url",
    "launch_new_study",
    "log_tail",
    "refresh_active",
    "refresh_study",
    "resume_command",
    "resume_study",
    "run_dir",
]
