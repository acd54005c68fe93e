"""Everything that runs a study: Ray Tune, Optuna, MLflow, torch. Never Django."""
