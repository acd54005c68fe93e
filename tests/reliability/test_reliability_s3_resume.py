"""Tune's storage on S3: the driver dies mid-study and `launch.py --resume s3://...`
continues it. AWS cannot be reached from here, so the S3 API is served on 127.0.0.1 by
moto's server (a real HTTP server that pyarrow, Tune and boto3 talk to as to AWS)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_config_files
from tests.reliability.reliability_helpers import Driver, free_port, run_launch, trials_done
from tuning.recovery.resume import RESUME_FILE

pytestmark = pytest.mark.ray

BUCKET = "themetune-test"


@pytest.fixture
def s3(tmp_path):
    """An S3 endpoint on 127.0.0.1 with one empty bucket, and the AWS settings that
    point the AWS SDKs (boto3, and pyarrow's, which Tune uses) at it."""
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "moto.log").open("w"))
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "moto.log").read_text()[-2000:]
                assert time.time() < deadline, "the S3 server did not start"
                time.sleep(0.3)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket=BUCKET)
        yield {"env": env, "client": client}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_reliability_killed_driver_resumes_from_s3(site, s3, tmp_path):
    n_trials = 4
    configs = tiny_config_files(
        tmp_path / "configs", n_trials=n_trials, epochs=2, study={"name": "s3study"},
        light_checkpoints=True,   # each epoch's checkpoint goes through the S3 server
        infra={"mlflow": {"tracking_uri": "sqlite:///mlflow.db", "log_models": "best"},
               "ray": {"storage_path": f"s3://{BUCKET}/results"},
               "resources": {"cpu": 1, "gpu": 0}, "max_concurrent_trials": 2,
               "cache_dir": str(tmp_path / "cache")})
    env = {**site["env"], **s3["env"]}
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])

    driver = Driver(env, tmp_path, "--theme-id", site["theme_id"], "--configs", configs)
    try:
        started = driver.wait_for(lambda line: "continue with: " in line, timeout=300)
        driver.wait_for(lambda line: 1 <= (trials_done(line) or 0) < n_trials, timeout=400)
        driver.kill()
    finally:
        driver.close()
    resume_cmd = started.split("continue with: ")[1].strip()
    experiment = resume_cmd.split("--resume ")[1]
    assert experiment.startswith(f"s3://{BUCKET}/results/s3study-"), resume_cmd
    # Tune's state and ours are in the bucket, nowhere else.
    key = experiment.removeprefix(f"s3://{BUCKET}/") + "/" + RESUME_FILE
    saved = json.loads(s3["client"].get_object(Bucket=BUCKET, Key=key)["Body"].read())
    parent_id = saved["parent_run_id"]
    assert client.get_run(parent_id).info.status == "RUNNING"   # a crash: nobody closed it

    # Resume from another folder: only the bucket holds the study's state.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_launch(env, elsewhere, *shlex.split(resume_cmd)[2:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"parent run:      {parent_id}" in result.stdout

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["themetune.resumes"] == "1"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    numbers = sorted(int(c.data.tags["optuna.trial_number"]) for c in children)
    assert numbers == list(range(n_trials)), [c.info.run_name for c in children]
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "valid_loss")]
        assert steps == [1, 2], (child.info.run_name, steps)
    # The best model came from its checkpoint in the bucket into MLflow and the registry.
    version = client.get_model_version("crash_digits_model", parent.data.tags[
        "registered_model"].split("/")[1])
    assert version.tags["parent_run_id"] == parent_id
    listed = s3["client"].list_objects_v2(Bucket=BUCKET, Prefix="results/")
    assert any("checkpoint_" in o["Key"] for o in listed.get("Contents", []))
