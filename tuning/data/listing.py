"""Lists of files inside a one-line error: a theme may have thousands of bad ones."""

from __future__ import annotations

MAX_LISTED = 5


def listing(items: list[str], sep: str = ", ") -> str:
    """The first MAX_LISTED items, then how many more there are."""
    more = f"{sep}and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return sep.join(items[:MAX_LISTED]) + more
