"""Everything that runs a study: Ray Tune, Optuna, MLflow, torch. Never Django.

    study.py          prepare_study (every check a user error can fail) and run_study
    config/           the four YAML files as validated models; the search space
    data/             a theme's images decoded, split and cached; device augments
    trial/            what one Ray Tune trial runs: network, weights, loop, memory cap
    tracking/         what a study records and tells: MLflow runs and models, the
                      ledger, the recorder's events, progress and console output
    recovery/         stop signals, and resuming a study whose driver died
    optuna_adapter.py Ray's OptunaSearch as our trials report, and Optuna storages
    cluster.py        starting or joining Ray, resources, the shared-storage probe
    storage.py        Tune's storage (local or s3://) and absolute database URLs
    errors.py         the errors a user can cause (exit 2) or a stopped study ends with
"""
