"""Which source images go to train, valid and test: stratified by class, reproducible
by seed, the same for both data paths."""

from __future__ import annotations

import numpy as np

from tuning.data.listing import listing
from tuning.data.settings import PreprocessSettings
from tuning.data.theme import ThemeSpec
from tuning.errors import DataError

SPLIT_NAMES = ("train", "valid", "test")


def theme_labels(theme: ThemeSpec) -> np.ndarray:
    """The label of every sample, or DataError when the theme has none."""
    if not theme.samples:
        raise DataError(f"theme '{theme.name}' (id {theme.id}) has no images.",
                        fix="add labelled images to the theme.")
    labels = np.array([s.label for s in theme.samples], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= theme.num_classes:
        raise ValueError(f"sample labels must index class_names (0..{theme.num_classes - 1}); "
                         f"got {labels.min()}..{labels.max()}")
    return labels


def assign_readable(theme: ThemeSpec, labels: np.ndarray, reasons: list[str | None],
                    settings: PreprocessSettings) -> tuple[np.ndarray, np.ndarray]:
    """The split of every readable source image (-1: skipped), or DataError when an
    image cannot be read and skipping was not asked for."""
    unreadable = [(sample.path, why) for sample, why in zip(theme.samples, reasons)
                  if why is not None]
    if unreadable and not settings.skip_unreadable:
        listed = listing([f"{path} ({why})" for path, why in unreadable], sep="; ")
        raise DataError(
            f"every image of theme '{theme.name}' must be a readable image file; "
            f"{len(unreadable)} cannot be read: {listed}.",
            fix="remove it or set data.skip_unreadable: true.")
    ok = np.array([why is None for why in reasons])
    return ok, _assign_splits(labels, ok, settings, theme.class_names)


def check_class_sizes(labels: np.ndarray, ok: np.ndarray, settings: PreprocessSettings,
                      class_names: tuple[str, ...]) -> None:
    """DataError unless every class has one readable image per split with a nonzero
    fraction."""
    needed = sum(1 for f in settings.split if f > 0)
    counts = np.bincount(labels[ok], minlength=len(class_names))
    short = [f"'{class_names[c]}' has {counts[c]}" for c in range(len(class_names))
             if counts[c] < needed]
    if short:
        ratio = "/".join(f"{f:g}" for f in settings.split)
        raise DataError(
            f"each class needs at least {needed} readable images so that every split with a "
            f"nonzero fraction (train/valid/test = {ratio}) gets one; {', '.join(short)}.",
            key="data.split_ratio",
            fix="add images to these classes or change data.split_ratio.")


def _assign_splits(labels: np.ndarray, ok: np.ndarray, settings: PreprocessSettings,
                   class_names: tuple[str, ...]) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test; -1 skipped) per source image, stratified by class."""
    check_class_sizes(labels, ok, settings, class_names)
    fractions = np.array(settings.split, dtype=np.float64)
    assignment = np.full(len(labels), -1, dtype=np.int64)
    for c in range(len(class_names)):
        members = np.flatnonzero(ok & (labels == c))
        # One generator per class: adding a class leaves the others' splits unchanged.
        rng = np.random.default_rng([settings.seed, c])
        members = members[rng.permutation(len(members))]
        sizes = _split_sizes(len(members), fractions)
        assignment[members] = np.repeat(np.arange(3), sizes)
    return assignment


def _split_sizes(n: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding, then one image moved into each nonzero split left empty."""
    exact = n * fractions
    sizes = np.floor(exact).astype(np.int64)
    remainders = np.where(fractions > 0, exact - sizes, -1.0)  # a zero fraction gets nothing
    for i in np.argsort(-remainders, kind="stable")[: n - sizes.sum()]:
        sizes[i] += 1
    for i in np.flatnonzero((fractions > 0) & (sizes == 0)):
        sizes[np.argmax(sizes)] -= 1
        sizes[i] += 1
    return sizes
