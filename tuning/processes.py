"""A process's start time, from /proc: with its pid, it tells a study's driver from a
later process that got the same pid (the database keeps both, see
data_access.models.TuningStudy.process_start)."""

from __future__ import annotations

from pathlib import Path


def process_stat(pid: int | str = "self") -> list[str] | None:
    """The fields of /proc/<pid>/stat from the state (field 3) on; None when there is no
    such process, or no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return text.rsplit(")", 1)[1].split()


def process_start_time(pid: int | str = "self") -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat);
    empty when there is no such process, or no /proc."""
    fields = process_stat(pid)
    return start_time_of(fields) if fields else ""


def start_time_of(stat: list[str]) -> str:
    """The start time in fields from process_stat."""
    return stat[19]
