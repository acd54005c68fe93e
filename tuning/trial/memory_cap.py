"""A trial's memory cap (config.yaml `resources.memory_gb`), and telling an out-of-memory
error apart from other errors.

The cap is a soft RLIMIT_DATA on the trial's worker process: the memory it holds when
the trial starts (Python, torch, Ray's client) plus `memory_gb`. An allocation past it
fails at once in that process (torch: "can't allocate memory", Python: MemoryError), so
a runaway trial ends FAILED with a clear reason instead of pushing the whole node into
swap or into Ray's memory monitor, which kills whatever worker it picks. It caps host
memory only; GPU memory is the GPU's own limit (torch.cuda.OutOfMemoryError).
"""

from __future__ import annotations

import re
import resource
from contextlib import contextmanager
from pathlib import Path

GIB = 1024 ** 3

_OOM_TEXT = re.compile(r"out of memory|can't allocate memory|cannot allocate memory",
                       re.IGNORECASE)


class TrialOutOfMemoryError(RuntimeError):
    """A trial needed more memory than it had (its cap, the host or the GPU)."""


def process_data_bytes() -> int:
    """The process's private data (VmData): what RLIMIT_DATA counts."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmData:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


@contextmanager
def memory_cap(limit_bytes: int | None):
    """Cap the memory this process may add while inside; lifted again on the way out
    (a reused worker runs the next trial with its own cap)."""
    if not limit_bytes or not Path("/proc/self/status").exists():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = process_data_bytes() + int(limit_bytes)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


# oneDNN (torch's CPU convolutions) reports a failed allocation of its work space only
# as this; it has other causes too, so it counts as out of memory only under a cap.
_ONEDNN_TEXT = "could not create a primitive"


def is_out_of_memory(exc: BaseException, *, capped: bool = False) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc)
    return bool(_OOM_TEXT.search(text)) or (capped and _ONEDNN_TEXT in text)
