"""Helpers shared by the reliability tests: launch.py as a background process."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def launch_cmd(*args) -> list[str]:
    return [sys.executable, str(ROOT / "launch.py"), *map(str, args)]


def run_launch(env, cwd, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*args), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


class Driver:
    """launch.py as a background process whose stdout lines the test reads as they come."""

    def __init__(self, env, cwd, *args):
        self.proc = subprocess.Popen(launch_cmd(*args), env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self.lines: list[str] = []

    def wait_for(self, predicate, timeout: float) -> str:
        deadline = time.time() + timeout
        for line in self.proc.stdout:
            self.lines.append(line)
            if predicate(line):
                return line
            if time.time() > deadline:
                break
        raise AssertionError("launch.py never printed the awaited line:\n"
                             + "".join(self.lines[-60:]))

    def wait(self, timeout: float) -> int:
        """Wait for the driver to exit; its remaining output joins `lines`."""
        self.proc.wait(timeout=timeout)
        self.lines.extend(self.proc.stdout.read().splitlines(keepends=True))
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the driver only, as a crash would: no handler, no cleanup."""
        self.proc.send_signal(signal.SIGKILL)
        self.wait(timeout=60)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)


def trials_done(line: str) -> int | None:
    """N of a progress line "[themetune] trials N/M done", else None."""
    match = re.search(r"\[themetune\] trials (\d+)/\d+ done", line)
    return int(match.group(1)) if match else None


def trial_folder_files(experiment: Path) -> set[str]:
    """Every file in the trial folders of a Tune experiment: a trial that Tune starts
    again adds one (an event file at least)."""
    return {str(p.relative_to(experiment)) for p in experiment.glob("*/**/*")
            if p.is_file() and p.relative_to(experiment).parts[0] != "themetune_configs"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
