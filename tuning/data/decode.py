"""Decoding a theme's images into uint8 arrays, in chunks, on threads when that pays,
with progress about every tenth."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from PIL import Image

from theme_classifier.preprocess import HISTOGRAM_EQUALIZATION, equalize
from theme_classifier.preprocess import decode as decode_image
from tuning.data.settings import PreprocessSettings

Progress = Callable[[str], None]

# Themes shorter than this decode in a blink: reporting progress would be noise.
_PROGRESS_MIN_IMAGES = 200
# Images per task of the decode pool; also the granularity of progress reports.
_CHUNK = 100
_CHUNK_PIXELS = 4_000_000
# Pillow releases the GIL while it inflates, decodes and resizes, so threads overlap that
# C work for photo-sized files: measured on 2 shared cores, 1,000 512x384 files took
# 2.0 s (JPEG) and 3.7 s (PNG) with 2 threads against 3.1 s and 7.3 s in one. Small files
# spend most of their time in Python (open, mode checks), where threads only take turns:
# 2,000 PNGs of 8-32 px took 1.2 s with 2 threads against 0.8 s in one.
_THREADED_MIN_MEAN_BYTES = 64 * 1024
DECODE_WORKERS = min(8, os.cpu_count() or 1)


def threads_pay_off(stats: list[os.stat_result | None]) -> bool:
    """Whether the files are large enough on average for threads to overlap their decoding."""
    sizes = [st.st_size for st in stats if st is not None]
    return bool(sizes) and sum(sizes) / len(sizes) >= _THREADED_MIN_MEAN_BYTES


def decode_all(paths: list[str], settings: PreprocessSettings, report: Progress, *,
               threaded: bool):
    """Decode, resize (and equalize) every image into one (N, C, S, S) array.

    Returns the array and, per path, None or the reason it could not be read."""
    n, s = len(paths), settings.image_size
    images = np.zeros((n, settings.channels, s, s), dtype=np.uint8)
    reasons: list[str | None] = [None] * n
    # Chunks of at most _CHUNK_PIXELS values bound the int64 temporaries of equalize.
    per_chunk = max(1, min(_CHUNK, _CHUNK_PIXELS // (settings.channels * s * s)))
    chunks = [range(i, min(i + per_chunk, n)) for i in range(0, n, per_chunk)]
    verbose = n >= _PROGRESS_MIN_IMAGES
    workers = min(DECODE_WORKERS, len(chunks)) if threaded else 1
    if verbose:
        report(f"decoding {n} images ({workers} worker{'s' * (workers > 1)})")
    results = _map_chunks(workers, [[paths[i] for i in c] for c in chunks], settings)
    next_report = n // 10
    for chunk, (array, chunk_reasons) in zip(chunks, results):
        images[chunk.start:chunk.stop] = array
        reasons[chunk.start:chunk.stop] = chunk_reasons
        if verbose and (chunk.stop >= next_report):
            report(f"decoded {chunk.stop}/{n} images ({100 * chunk.stop // n}%)")
            next_report = chunk.stop + n // 10
    return images, reasons


def _map_chunks(workers: int, chunks: list[list[str]], settings: PreprocessSettings):
    if workers <= 1:
        yield from (decode_chunk(c, settings) for c in chunks)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(decode_chunk, chunks, [settings] * len(chunks))


def decode_chunk(paths: list[str], settings: PreprocessSettings):
    """(n, C, S, S) uint8 images of `paths` and, per path, None or why it cannot be read
    (its image then left zero)."""
    s = settings.image_size
    out = np.zeros((len(paths), settings.channels, s, s), dtype=np.uint8)
    reasons: list[str | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            out[i] = decode_image(path, size=settings.image_size, channels=settings.channels)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            # PIL signals a broken or non-image file with any of these; the caller lists
            # them all at once instead of failing on the first.
            reasons[i] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    if settings.brightness == HISTOGRAM_EQUALIZATION:
        out = equalize(out)
    return out, reasons
