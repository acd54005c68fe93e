"""The one test of "is this a usable metric value": Optuna, MLflow and PostgreSQL's
jsonb all refuse NaN and infinities, and a bool is not a number here."""

from __future__ import annotations

import math
from typing import Any


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is neither NaN nor infinite; False for a bool."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
