"""A theme's images made ready for trials, by one of two paths (tuning.data.mode):

resident   tuning.data.resident: decoded once into arrays cached on disk and put in
           Ray's object store.
streaming  tuning.data.shards: decoded into shard files that trials read batch by batch.

Both share the cache keys (keys), decoding (decode), the split assignment (split) and
the atomic cache writes (cache), and hand a trial a TrialData (trial_data).
"""

from tuning.data.resident import PreparedData, Split, pixel_sums, prepare_data
from tuning.data.settings import PreprocessSettings
from tuning.data.trial_data import ChannelSums, TrialData

__all__ = ["ChannelSums", "PreparedData", "PreprocessSettings", "Split", "TrialData",
           "pixel_sums", "prepare_data"]
