"""A theme's images made ready for trials, by one of two paths (tuning.data.mode):

resident   tuning.data.resident: decoded once into arrays cached on disk and put in
           Ray's object store.
streaming  tuning.data.shards: decoded into shard files that trials read batch by batch.

Both share the cache keys (keys), decoding (decode), the split assignment (split) and
the atomic cache writes (cache), and hand a trial a TrialData (trial_data).
"""


import importlib

# Loaded on first use (PEP 562): `from tuning.data.theme import ...` in Django's
# startup (every manage.py command, every web worker) would otherwise import torch,
# about 3 s of CPU, through resident.
_EXPORTS = {"PreparedData": "resident", "Split": "resident", "pixel_sums": "resident",
            "prepare_data": "resident", "PreprocessSettings": "settings",
            "ChannelSums": "trial_data", "TrialData": "trial_data"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tuning.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tuning.data.{_EXPORTS[name]}"), name)
