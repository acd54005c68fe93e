"""Turning pydantic's validation failures into one ConfigError line naming the file and
the dotted key."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from tuning.errors import ConfigError, shown_value


def printable(text: Any) -> str:
    """`text` with control characters escaped: a key such as "a\\nb" (legal YAML) must
    not break the one-line error message."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def _dotted(loc: tuple[Any, ...]) -> str:
    # Pydantic puts union member names (e.g. "float") into loc; they are not keys.
    return ".".join(printable(part) for part in loc if not str(part).startswith("function-"))


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a model accepts at the parent of `loc`, for an 'unknown key' message."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
        args = getattr(current, "__args__", ())
        current = next((a for a in args if hasattr(a, "model_fields")), current)
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def config_error_from_validation(exc: ValidationError, *, file: str, model: type[BaseModel],
                                 prefix: str = "") -> ConfigError:
    """The first validation error, as one line naming the file and the dotted key."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err.get("loc", ()))
    key = (prefix + _dotted(loc)).rstrip(".")
    kind = err.get("type", "")
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc)
        fix = (f"remove it or use one of: {', '.join(allowed)}." if allowed
               else "remove it (check its spelling).")
        return ConfigError("unknown key.", file=file, key=key, fix=fix)
    if kind == "missing":
        return ConfigError("required key is missing.", file=file, key=key,
                           fix="add it (see configs/ for an example).")
    message = err.get("msg", "invalid value")
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    # A rule across several keys (low <= high) already names the values it saw.
    got = "" if isinstance(value, dict) else f" (got {shown_value(value)})"
    return ConfigError(f"{message}{got}.", file=file, key=key or None,
                       fix="correct the value (see configs/ for an example).")
