"""A study as a local background process: `python launch.py ...` in its own session.

The process is found again by pid and start time (from /proc), so that neither a web
server restart nor a pid reused by another program confuses it with ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tuning.processes import process_start_time, process_stat, start_time_of

_DETACH = Path(__file__).with_name("_detach.py")


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start: str   # /proc/<pid>/stat start time; "" where /proc does not exist


class LocalStartError(RuntimeError):
    """The detach helper failed: the study process was not started."""


def start(command: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> ProcessRef:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    helper = subprocess.run([sys.executable, str(_DETACH), str(log_path), *command],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if helper.returncode != 0 or not helper.stdout.strip().isdigit():
        lines = (helper.stderr or helper.stdout).strip().splitlines()
        raise LocalStartError(lines[-1] if lines else f"exit code {helper.returncode}")
    pid = int(helper.stdout.strip())
    return ProcessRef(pid=pid, start=process_start_time(pid))


def is_running(ref: ProcessRef) -> bool:
    if not Path("/proc").is_dir():
        try:
            os.kill(ref.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = process_stat(ref.pid)
    if fields is None:
        return False
    # A zombie has exited; only its parent (init, once adopted) has yet to reap it.
    if fields[0] in ("Z", "X"):
        return False
    return not ref.start or start_time_of(fields) == ref.start


def runs_script(ref: ProcessRef, script: str) -> bool:
    """Whether the process runs `script` (`python SCRIPT ...`): a row edited to point at
    another process of this user must not get it signalled. True where /proc does not
    exist (nothing to read it from; the start time guards there)."""
    if not Path("/proc").is_dir():
        return True
    try:
        raw = Path(f"/proc/{ref.pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return script in raw.decode("utf-8", errors="replace").split("\0")[1:3]


def interrupt(ref: ProcessRef) -> bool:
    """SIGINT to the driver alone: launch.py turns it into KeyboardInterrupt and marks
    its trials and MLflow runs KILLED before it exits."""
    return _signal(ref, lambda: os.kill(ref.pid, signal.SIGINT))


def kill_group(ref: ProcessRef, sig: int) -> bool:
    """A signal to the whole session (the driver and the local Ray it started)."""
    return _signal(ref, lambda: os.killpg(ref.pid, sig))


def _signal(ref: ProcessRef, send) -> bool:
    if not is_running(ref):
        return False
    try:
        send()
    except ProcessLookupError:
        return False
    return True
