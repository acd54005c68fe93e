"""The Django database is unreachable when a study starts.

(Unreachable mid-study: the recorder queues its writes and reports what it could not
write; tests/data_access/test_data_access_recorder.py causes that for real.)"""

from __future__ import annotations

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import free_port, run_launch


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
