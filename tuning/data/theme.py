"""The plain description of a theme that crosses from data_access/ into tuning/.

Nothing Django-shaped leaves data_access/: the selector builds one of these, and
tuning/ reads nothing else about a theme.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    path: str   # absolute path of the image file
    label: int  # index into ThemeSpec.class_names


@dataclass(frozen=True)
class ThemeSpec:
    id: int
    name: str
    class_names: tuple[str, ...]
    samples: tuple[Sample, ...]
    media_root: str  # images outside it are refused

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        counts = {name: 0 for name in self.class_names}
        for sample in self.samples:
            counts[self.class_names[sample.label]] += 1
        return counts
