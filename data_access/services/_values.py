"""Values as the database keeps them: plain JSON without NaN, finite floats or NULL,
timezone-aware datetimes."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from tuning.numbers import is_finite_number


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN and infinities become null (PostgreSQL's jsonb refuses them),
    numpy scalars become Python numbers, tuples become lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if is_finite_number(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "item"):  # numpy scalar
        return json_safe(value.item())
    return str(value)


def finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if is_finite_number(value) else None


def aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    # Events carry datetime.now(): naive local time of the driver.
    return moment.astimezone().astimezone(dt_timezone.utc)
