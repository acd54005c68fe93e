"""The Django database is unreachable when a study starts (exit 2), or goes away while
it runs (a real PostgreSQL server stopped and started: nothing lost). How the recorder
queues and reports writes is tested in tests/data_access/test_data_access_recorder.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import tiny_config_files
from tests.reliability.postgres_server import PostgresServer
from tests.reliability.reliability_helpers import ROOT, Driver, free_port, run_launch


@pytest.mark.slow
def test_reliability_database_down_at_start_exits_2(site, tmp_path):
    configs = tiny_config_files(tmp_path / "configs")
    port = free_port()  # nothing listens there
    env = {**site["env"], "DATABASE_URL": f"postgresql://tuner:s3cret@127.0.0.1:{port}/themes",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PGCONNECT_TIMEOUT": "3"}
    result = run_launch(env, tmp_path, "--theme-id", site["theme_id"], "--configs", configs)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert f"postgresql://tuner@127.0.0.1:{port}/themes" in lines[0]
    assert "check DATABASE_URL" in lines[0] and "s3cret" not in result.stderr
    # Nothing was started: no MLflow store, no Tune folder.
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "configs" / "ray_results").exists()


@pytest.mark.postgres
@pytest.mark.ray
def test_reliability_postgres_down_mid_study_loses_no_record(digits_folder, tmp_path):
    """A real PostgreSQL server is stopped while trials run and started again: the study
    goes on, and every trial's row and every epoch reach the database once it is back."""
    import psycopg

    server = PostgresServer(free_port())
    try:
        server.start()
        server.create_database()
        env = {k: v for k, v in os.environ.items()
               if k not in ("DJANGO_SETTINGS_MODULE", "MLFLOW_RUN_ID", "RAY_ADDRESS")}
        env.update(DATABASE_URL=server.url, MEDIA_ROOT=str(tmp_path / "media"),
                   MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
                   PYTHONUNBUFFERED="1")
        manage = [sys.executable, str(ROOT / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True,
                       cwd=tmp_path)
        out = subprocess.run([*manage, "import_theme", str(digits_folder), "--name", "pg_digits"],
                             env=env, check=True, cwd=tmp_path, capture_output=True, text=True)
        theme_id = int(out.stdout.strip().splitlines()[-1])
        n_trials, epochs = 3, 6
        configs = tiny_config_files(tmp_path / "configs", n_trials=n_trials, epochs=epochs,
                                    light_checkpoints=True)

        driver = Driver(env, tmp_path, "--theme-id", theme_id, "--configs", configs)
        try:
            driver.wait_for(lambda line: "trials 0/3 done | 1 running" in line, timeout=300)
            server.stop()
            driver.wait_for(lambda line: "themetune: warning: database postgresql://" in line
                            and "refused a write" in line, timeout=120)
            time.sleep(5)   # more events queue up behind the first
            server.start()
            driver.wait(timeout=400)
        finally:
            driver.close()
        output = driver.output
        assert driver.proc.returncode == 0, output[-4000:]
        assert "were not written" not in output
        assert f"trials {n_trials}/{n_trials} done" in output

        with psycopg.connect(server.url) as conn:
            (status,) = conn.execute("select status from data_access_tuningstudy").fetchone()
            rows = conn.execute("select number, state, metrics from data_access_tuningtrial "
                                "order by number").fetchall()
        assert status == "completed"
        assert [r[0] for r in rows] == list(range(n_trials))
        for number, state, metrics in rows:
            assert state == "COMPLETE", (number, state)
            assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1)), (number, metrics)
    finally:
        server.remove()
