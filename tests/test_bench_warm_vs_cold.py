"""bench.warm_vs_cold's arithmetic: which trial reaches a target, and the warm / cold
ratios per round, on made-up studies (the bench itself runs real ones)."""

from __future__ import annotations

import pytest

from bench.warm_vs_cold import COLD, MATCH, NEAR, WARM, ratios, targets, to_target


def study(variant: str, round_: int, values: list[float | None], first_number: int = 0,
          t0: float = 100.0) -> dict:
    """A study whose trial i (Optuna number first_number + i) ended at t0 + 10 (i + 1)."""
    trials = [(first_number + i, v, t0 + 10 * (i + 1)) for i, v in enumerate(values)]
    return {"variant": variant, "round": round_, "trials": trials, "t0": t0}


def test_targets_are_the_first_best_and_just_below_it():
    assert targets(0.9741, None) == {MATCH: 0.9741, NEAR: 0.9643}
    assert targets(0.9741, 0.95) == {MATCH: 0.95}


def test_trials_count_from_the_first_new_trial():
    # A warm study's new trials come after the given ones in Optuna's numbering.
    warm = study(WARM, 1, [0.90, None, 0.97, 0.99], first_number=10)
    assert to_target(warm, 0.97, "maximize", 4) == (3, 30.0)
    assert to_target(warm, 0.995, "maximize", 4) == (5, None)   # never: n_trials + 1
    assert to_target(study(COLD, 1, [0.5, 0.2]), 0.3, "minimize", 2) == (2, 20.0)


def test_ratios_pair_warm_and_cold_of_the_same_round():
    rounds = [study(WARM, 1, [0.9, 0.98]), study(COLD, 1, [0.9, 0.9, 0.9, 0.98]),
              study(COLD, 2, [0.98]), study(WARM, 2, [0.9, 0.9])]
    found = ratios(rounds, 0.98, "maximize", 4)
    # Round 2's warm study never reached it: n_trials + 1 = 5 against 1.
    assert found["per_round"] == [pytest.approx(0.5), pytest.approx(5.0)]
    assert found["trials"] == pytest.approx(2.75)
    # Seconds only where both reached it: round 1, 20 s / 40 s.
    assert found["seconds"] == pytest.approx(0.5)
    assert found["reached"] == {WARM: 1, COLD: 2}
