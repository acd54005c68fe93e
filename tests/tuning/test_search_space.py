"""Search space to Optuna distributions, and the progress line."""

from __future__ import annotations

import optuna.distributions as od

from tuning.config.params import is_final_result, known_param_paths, params_with_sample
from tuning.config.search_space import format_space, parse_param, to_distributions
from tuning.tracking.ledger import COMPLETE, FAIL, StudyLedger, TrialRecord
from tuning.tracking.progress import progress_line


def test_distributions_match_the_yaml():
    space = {
        "training.learning_rate": parse_param("training.learning_rate", {
            "type": "float", "low": 1e-4, "high": 1e-2, "log": True}, file="f"),
        "training.momentum": parse_param("training.momentum", {
            "type": "float", "low": 0.5, "high": 0.9, "step": 0.1}, file="f"),
        "training.batch_size": parse_param("training.batch_size", {
            "type": "categorical", "choices": [2, 4, 8, 18, 36]}, file="f"),
    }
    dists = to_distributions(space)
    assert dists["training.learning_rate"] == od.FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["training.momentum"] == od.FloatDistribution(0.5, 0.9, step=0.1)
    assert dists["training.batch_size"] == od.CategoricalDistribution((2, 4, 8, 18, 36))
    lines = format_space(space)
    assert lines[0] == "  training.learning_rate: float [0.0001, 0.01] log"
    assert "step=0.1" in lines[1]


def test_known_paths_and_sampling_into_nested_params():
    paths = known_param_paths()
    assert "training.learning_rate" in paths and "model.name" in paths
    assert "data.split_ratio.train" in paths
    tree = params_with_sample({"training": {"num_epochs": 3}},
                              {"training.learning_rate": 0.1, "model.name": "ResNet50"})
    assert tree == {"training": {"num_epochs": 3, "learning_rate": 0.1},
                    "model": {"name": "ResNet50"}}


def test_final_result_needs_test_metrics():
    assert not is_final_result({"valid_acc": 0.5})
    assert is_final_result({"valid_acc": 0.5, "test_acc": 0.4, "test_loss": 1.0})


def test_progress_line_counts_and_best():
    ledger = StudyLedger(metric="test_acc", direction="maximize", n_trials=5)
    ledger.started = 1000.0
    for i, (state, value) in enumerate([(COMPLETE, 0.7), (COMPLETE, 0.9), (FAIL, None)]):
        ledger.add(TrialRecord(ray_trial_id=str(i), number=i, params={}, state=state,
                               value=value))
    ledger.add(TrialRecord(ray_trial_id="9", number=3, params={}))
    line = progress_line(ledger, now=1060.0)
    assert "trials 3/5 done" in line and "1 running" in line and "1 pending" in line
    assert "0 pruned, 1 failed" in line
    assert "best test_acc=0.9000 (trial 1)" in line
    assert "elapsed 0:01:00" in line and "~0:00:40 left" in line
    ledger.direction = "minimize"
    assert "best test_acc=0.7000 (trial 0)" in progress_line(ledger, now=1060.0)
