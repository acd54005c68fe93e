"""Benchmarks (not tests): `make bench`, or `python -m bench.<name> [--quick]`.

overhead          the whole service around trials of fixed work vs the theoretical minimum
loop              the trial's training loop vs a bare PyTorch loop
time_to_accuracy  the original one-process Optuna study vs this service, to the same accuracy
data              theme decoding: cold vs cached, and trial start to first training batch
packing           several small trials sharing one GPU through Ray's fractional GPUs

Each prints machine info and a table, and as its last line one JSON object with at
least `bench` and `ratio`.
"""
