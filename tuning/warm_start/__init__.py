"""Studies that start from what earlier ones learned (`launch.py --warm-start`).

`sources` names the sources and holds the earlier studies as plain data (no Optuna, so
that `data_access` can build them); `carry` decides what of them the new study's
searcher gets, and gives it to the Optuna study.
"""
