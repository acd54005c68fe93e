"""The lease hardened (issue 21, item 1): a live driver on its own host is never taken
over, whatever its heartbeat says; an unreadable lease file is held, not ignored; a
driver that lost its lease never runs the end steps; messages show the setting as given."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import Driver, run_launch
from tests.reliability.test_reliability_lease import _resume_target
from tuning.processes import process_start_time
from tuning.recovery import lease


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lease.LEASE_FILE
    path.write_text(text)
    return path


def _lease_json(*, pid: int, pid_start: str, host: str | None = None, age_s: float = 0.0,
                token: str = "theirs") -> str:
    return json.dumps({"host": host or socket.gethostname(), "pid": pid,
                       "pid_start": pid_start, "token": token,
                       "heartbeat_at": time.time() - age_s})


def test_a_live_driver_on_this_host_is_never_stale_however_old_its_heartbeat(
        tmp_path, live_process, monkeypatch):
    monkeypatch.setenv(lease.STALE_ENV, "0.001")
    path = _write(tmp_path, _lease_json(pid=live_process.pid, age_s=3600,
                                        pid_start=process_start_time(live_process.pid)))
    for attempt in (lease.check_free, lease.acquire):
        with pytest.raises(lease.LeaseHeldError) as refused:
            attempt(str(tmp_path))
        assert f"pid {live_process.pid} on host {socket.gethostname()}" in refused.value.one_line()
    assert json.loads(path.read_text())["token"] == "theirs"


def test_a_stale_heartbeat_from_another_host_names_the_setting_as_given(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv(lease.STALE_ENV, "0.5")
    _write(tmp_path, _lease_json(pid=1, pid_start="1", host="elsewhere", age_s=9))
    held = lease.acquire(str(tmp_path))
    held.release()
    warning = capsys.readouterr().err
    assert f"over {lease.STALE_ENV}=0.5)" in warning, warning


@pytest.mark.parametrize("text", [
    "", "garbage{", "[]", "{}", '{"host": "h"}', "\xff\xfe",
    json.dumps({"host": "h", "pid": "12", "pid_start": "1", "token": "t", "heartbeat_at": 1}),
    json.dumps({"host": "h", "pid": 12, "pid_start": "1", "token": "t", "heartbeat_at": "now"}),
    json.dumps({"host": "h", "pid": 12, "pid_start": "1", "token": "t", "heartbeat_at": 1,
                "extra": 1}),
], ids=["empty", "not json", "list", "no keys", "missing keys", "not utf8", "pid text",
        "heartbeat text", "unknown key"])
def test_an_unreadable_lease_file_is_treated_as_held(tmp_path, text):
    path = _write(tmp_path, text)
    for attempt in (lease.check_free, lease.acquire):
        with pytest.raises(lease.LeaseHeldError) as refused:
            attempt(str(tmp_path))
        line = refused.value.one_line()
        assert str(path) in line and "unreadable" in line and "delete the file" in line, line
        assert "\n" not in line
    assert path.read_text() == text


def test_a_driver_that_lost_its_lease_stops_before_the_end_steps(tmp_path):
    held = lease.acquire(str(tmp_path))
    try:
        lease.check_still_held(str(tmp_path))   # ours: nothing said
        _write(tmp_path, _lease_json(pid=1, pid_start="1", host="elsewhere", token="new"))
        with pytest.raises(lease.LeaseLostError, match="pid 1 on host elsewhere"):
            lease.check_still_held(str(tmp_path))
        (tmp_path / lease.LEASE_FILE).unlink()
        with pytest.raises(lease.LeaseLostError, match="no longer holds"):
            lease.check_still_held(str(tmp_path))
    finally:
        held.release()
    assert lease.LeaseLostError.exit_code == 1


@pytest.mark.ray
@pytest.mark.slow
def test_resume_refused_while_the_driver_is_stopped_on_this_host(site, tmp_path):
    """A real driver, stopped (SIGSTOP) well past a tiny THEMETUNE_LEASE_STALE_S: the
    resume exits 2 with one line naming it and touches nothing; continued, the driver
    finishes its study."""
    configs = tiny_config_files(tmp_path / "configs", n_trials=1, epochs=3,
                                light_checkpoints=True)
    driver = Driver(site["env"], tmp_path, "--theme-id", site["theme_id"], "--configs",
                    configs, "--study-name", "paused")
    try:
        started = driver.wait_for(lambda line: "continue with: " in line, timeout=300)
        resume_args, experiment, _ = _resume_target(started)
        os.kill(driver.proc.pid, signal.SIGSTOP)
        try:
            lease_before = (experiment / lease.LEASE_FILE).read_text()
            time.sleep(1.5)
            refused = run_launch({**site["env"], lease.STALE_ENV: "0.2"}, tmp_path,
                                 *resume_args, timeout=120)
            lease_after = (experiment / lease.LEASE_FILE).read_text()
        finally:
            os.kill(driver.proc.pid, signal.SIGCONT)
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"pid {driver.proc.pid} on host {socket.gethostname()}" in errors[0]
        assert "took over" not in refused.stderr
        assert lease_after == lease_before
        assert driver.wait(timeout=600) == 0, driver.output[-3000:]
        assert "two drivers" not in driver.output
    finally:
        driver.close()
