"""One driver per study: a lease file in the Tune experiment folder.

A second driver on the same experiment (a `--resume` while the first driver still
runs, or a web resume racing a CLI one) would run the same Tune experiment twice: each
deletes the other's checkpoints and both write the same MLflow parent run. So a driver
holds `<experiment>/themetune_lease.json` (host, pid, the pid's start time, a random
token and a heartbeat) from before it writes anything until it ends, and a driver
that finds a live lease is refused (exit 2, naming the holder).

A lease is stale, and taken over with a warning, when its process is gone (same host,
and the pid is dead or now belongs to a process with another start time) or, for a
holder on another host only, when its heartbeat is older than THEMETUNE_LEASE_STALE_S
(default 120 s; the holder renews it every HEARTBEAT_S). On its own host a holder whose
pid still runs with the same start time is never stale, however old its heartbeat: a
driver stopped (SIGSTOP) or asleep past that time is still alive and would die of a
takeover. The heartbeat compares clocks of two hosts: keep them within a fraction of
that time. A lease file that cannot be read is treated as held (LeaseUnreadableError):
ignoring it could start a second driver.

A driver checks it still holds its lease before its end steps (best model, registry;
check_still_held): one paused past the stale time on another host and taken over meanwhile
stops there, and the end steps never run twice at once.

The file goes through tuning.storage (pyarrow), so the lease works on s3:// as on a
local folder. Neither offers an atomic create-if-absent through pyarrow, so a driver
writes its token, waits SETTLE_S and reads the file back: of drivers whose writes land
within SETTLE_S of each other, only the last writer finds its own token. What this
guarantees: two drivers both win only if one of them took more than SETTLE_S between
finding the lease free and writing its own, and then the loser's heartbeat finds the
other token within HEARTBEAT_S and says so on stderr.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass

from tuning import storage
from tuning.errors import LeaseHeldError, StudyStoppedError, ThemetuneError
from tuning.processes import process_start_time
from tuning.tracking import output

LEASE_FILE = "themetune_lease.json"
STALE_ENV = "THEMETUNE_LEASE_STALE_S"
DEFAULT_STALE_S = 120.0
HEARTBEAT_S = 10.0
SETTLE_S = 0.5


class LeaseUnreadableError(LeaseHeldError):
    """The lease file is there but not a lease, or the storage would not give it:
    treated as held, never ignored."""

    storage_failed = False   # True: the storage failed to read it, not its content


class LeaseLostError(StudyStoppedError):
    """This driver's lease was taken over while it ran (exit 1: what finished is kept)."""


@dataclass
class LeaseRecord:
    host: str
    pid: int
    pid_start: str
    token: str
    heartbeat_at: float

    def holder(self) -> str:
        return f"pid {self.pid} on host {self.host}"


def lease_path(experiment_path: str) -> str:
    return f"{experiment_path.rstrip('/')}/{LEASE_FILE}"


def stale_after_s() -> float:
    return _stale_setting()[0]


def _stale_setting() -> tuple[float, str]:
    """The stale time in seconds, and the setting as the user wrote it (for messages:
    a rounded value would misstate a setting of 0.5)."""
    value = os.environ.get(STALE_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_STALE_S
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):   # nan would make every lease live forever
        raise ThemetuneError(f"{STALE_ENV} must be a number of seconds above 0 "
                             f"(got {value[:40]!r}).", key=STALE_ENV,
                             fix="set it to e.g. 120, or unset it.")
    return seconds, (value.strip() if value else f"{DEFAULT_STALE_S:g} (default)")


def read_lease(experiment_path: str) -> LeaseRecord | None:
    """The lease in the folder; None when there is none. A file that is not a lease
    raises LeaseUnreadableError: a driver killed mid-write leaves no half file (writes
    are moved into place), so such a file was damaged or written by someone else, and
    whether a driver runs is unknown."""
    path = lease_path(experiment_path)
    try:
        if not storage.exists(path):
            return None
        data = storage.read_bytes(path)
    except OSError as exc:
        error = _unreadable_error(path, f"cannot read it: {exc}")
        error.storage_failed = True
        raise error from None
    try:
        fields = json.loads(data.decode("utf-8"))
        record = LeaseRecord(**fields)
        _check_types(record)
    except (ValueError, TypeError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise _unreadable_error(path, f"not a lease ({reason})") from None
    return record


def _check_types(record: LeaseRecord) -> None:
    if not (isinstance(record.host, str) and isinstance(record.pid_start, str)
            and isinstance(record.token, str)
            and isinstance(record.pid, int) and not isinstance(record.pid, bool)
            and isinstance(record.heartbeat_at, (int, float))
            and not isinstance(record.heartbeat_at, bool) and math.isfinite(record.heartbeat_at)
            and record.pid > 0):
        raise ValueError("a field has the wrong type")


def _unreadable_error(path: str, reason: str) -> LeaseUnreadableError:
    return LeaseUnreadableError(
        f"the study's lease file is unreadable, {reason}; a driver may still run this "
        f"study, so it is treated as held.", file=path,
        fix="if no driver runs this study (check with ps on its host), delete the file "
            "and run the command again.")


def why_stale(record: LeaseRecord, *, now: float | None = None,
              stale_s: float | None = None) -> str | None:
    """Why the lease's driver counts as gone; None while it looks alive."""
    if record.host == socket.gethostname():
        start = process_start_time(record.pid)
        if not start:
            return f"its process {record.pid} is gone"
        if start != record.pid_start:
            return f"pid {record.pid} now belongs to another process"
        # Alive on this host: its heartbeat says nothing more (a stopped or sleeping
        # driver is behind on it, and still the holder).
        return None
    age = (now if now is not None else time.time()) - record.heartbeat_at
    limit, shown = (stale_s, f"{stale_s:g}") if stale_s is not None else _stale_setting()
    if age > limit:
        return f"no heartbeat for {age:.0f} s (over {STALE_ENV}={shown})"
    return None


def check_free(experiment_path: str, *, key: str = "--resume") -> None:
    """Refuse at once when a live driver holds the experiment (no lease is taken)."""
    record = read_lease(experiment_path)
    if record is not None and not _is_mine(record) and why_stale(record) is None:
        raise _held_error(experiment_path, record, key)


def acquire(experiment_path: str, *, key: str = "--resume") -> "StudyLease":
    """Take the lease (a stale one with a warning) and start renewing it; `key` names
    what chose the experiment, for the refusal."""
    previous = read_lease(experiment_path)
    reason = None
    if previous is not None and not _is_mine(previous):
        reason = why_stale(previous)
        if reason is None:
            raise _held_error(experiment_path, previous, key)
    lease = StudyLease(experiment_path, _new_record())
    lease.write()
    time.sleep(SETTLE_S)
    winner = read_lease(experiment_path)
    if winner is None or winner.token != lease.record.token:
        raise _held_error(experiment_path, winner or previous or lease.record, key)
    if reason is not None:
        output.warn(f"took over the lease of {experiment_path} from the driver "
                    f"{previous.holder()}: {reason}.")
    lease.start_heartbeat()
    return lease


def check_still_held(experiment_path: str) -> None:
    """Raise LeaseLostError unless this process still holds the experiment's lease:
    called before a driver's end steps, which must never run in two drivers at once."""
    try:
        current = read_lease(experiment_path)
    except LeaseUnreadableError as exc:
        if exc.storage_failed:
            # The storage away for a moment says nothing of who holds the lease; the
            # heartbeat would have seen a takeover before it went away.
            output.warn(f"could not check the lease of {experiment_path}: {exc.message}")
            return
        current = None
    if current is None or not _is_mine(current):
        holder = current.holder() if current is not None else "nobody (the file is gone or unreadable)"
        raise LeaseLostError(
            f"this driver no longer holds the lease of {experiment_path} (now: {holder}); "
            f"it stops before the study's end steps so that they never run twice.",
            fix="let the driver that took the study over finish it; if none runs, "
                f"continue with: python launch.py --resume {experiment_path}")


class StudyLease:
    """This driver's lease: renewed by a daemon thread until release()."""

    def __init__(self, experiment_path: str, record: LeaseRecord):
        self.experiment_path = experiment_path
        self.record = record
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def write(self) -> None:
        _write_unique(lease_path(self.experiment_path),
                      json.dumps(asdict(self.record)).encode("utf-8"), self.record.token)

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._renew_until_stopped,
                                        name="themetune-lease", daemon=True)
        self._thread.start()

    def _renew_until_stopped(self) -> None:
        failing = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                try:
                    current = read_lease(self.experiment_path)
                except LeaseUnreadableError:
                    current = None   # damaged under our feet: ours to write again
                if current is not None and current.token != self.record.token:
                    output.warn(f"the lease of {self.experiment_path} was taken over by "
                                f"{current.holder()}; two drivers may now run this study.")
                    return
                self.record.heartbeat_at = time.time()
                self.write()
                failing = False
            except OSError as exc:
                # Storage away for a moment: keep trying; a lease left unrenewed past
                # the stale time may be taken over, which is the point of the heartbeat.
                if not failing:
                    output.warn(f"could not renew the lease of {self.experiment_path}: {exc}")
                failing = True

    def release(self) -> None:
        """Stop renewing and remove the file if it is still ours; never raises."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
        try:
            current = read_lease(self.experiment_path)
            if current is not None and current.token == self.record.token:
                fs, fs_path = storage.filesystem(lease_path(self.experiment_path))
                fs.delete_file(fs_path)
                _remove_if_empty(fs, fs_path.rsplit("/", 1)[0])
        except LeaseUnreadableError as exc:
            output.warn(f"left the lease of {self.experiment_path} in place: {exc.one_line()}")
        except OSError as exc:
            output.warn(f"could not remove the lease of {self.experiment_path}: {exc}")


def _new_record() -> LeaseRecord:
    return LeaseRecord(host=socket.gethostname(), pid=os.getpid(),
                       pid_start=process_start_time(), token=secrets.token_hex(16),
                       heartbeat_at=time.time())


def _is_mine(record: LeaseRecord) -> bool:
    # The same process taking the lease again (run_study called twice in one process).
    return (record.host == socket.gethostname() and record.pid == os.getpid()
            and record.pid_start == process_start_time())


def _write_unique(path: str, data: bytes, token: str) -> None:
    """Written beside under a name of our own, then moved over: two drivers writing at
    once never share (and truncate) one temporary file."""
    fs, fs_path = storage.filesystem(path)
    parent, name = fs_path.rsplit("/", 1)
    fs.create_dir(parent)
    tmp = f"{parent}/.{name}.{token}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, fs_path)


def _remove_if_empty(fs, folder: str) -> None:
    # A new study that stopped before Tune wrote anything leaves no empty folder behind.
    import pyarrow.fs

    if not fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True)):
        fs.delete_dir(folder)


def _held_error(experiment_path: str, record: LeaseRecord, key: str) -> LeaseHeldError:
    age = max(0.0, time.time() - record.heartbeat_at)
    return LeaseHeldError(
        f"one driver at a time runs a study, and the driver {record.holder()} runs this one "
        f"(got {experiment_path}; its lease was renewed {age:.0f} s ago).", key=key,
        fix=f"wait for it to end or stop it (kill {record.pid} on {record.host}); a lease "
            f"whose process is gone is taken over, and one held from another host also "
            f"when it has had no heartbeat for {STALE_ENV} seconds.")
