"""Validation helpers: every bad value raises a ValueError that names it and lists the valid ones."""
from __future__ import annotations

from collections.abc import Iterable


def check_choice(what: str, value, choices: Iterable) -> None:
    """Raise ``ValueError("unknown <what> 'x'; choose one of: a, b, c")`` unless ``value`` is a choice."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(map(str, choices))}")


def check_positive(what: str, value, *, allow_zero: bool = False, integer: bool = False,
                   finite: bool = False) -> None:
    """Raise a ValueError naming ``what`` unless ``value`` is a positive (or non-negative) number
    (and, with ``finite``, not infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{what} must be {kind}, got {value!r}")
    if value != value or (value < 0 if allow_zero else value <= 0):  # NaN fails too
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{what} must be {bound}, got {value!r}")
    if finite and value == float("inf"):
        raise ValueError(f"{what} must be a finite number, got {value!r}")


def check_integer(what: str, value) -> None:
    """Raise ``ValueError("<what> must be an integer, got x")`` unless ``value`` is an int (not a
    bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")


def check_divides(what: str, divisor: int, whole_what: str, whole: int) -> None:
    """Raise a ValueError unless ``divisor`` divides ``whole`` (e.g. groups into channels)."""
    if whole % divisor != 0:
        valid = [d for d in range(1, whole + 1) if whole % d == 0]
        raise ValueError(
            f"{what}={divisor} does not divide {whole_what}={whole}; valid values: "
            f"{', '.join(map(str, valid))}"
        )


def as_float(value):
    """A number as a float, and -0.0 as 0.0 (anything else as it is, for the checks to reject):
    ``lr=1`` and ``lr=1.0`` (a YAML grid, a CLI flag) are one config, with one run id."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) + 0.0
    return value


def as_floats(obj) -> None:
    """:func:`as_float` on every ``float``-annotated field of the frozen dataclass ``obj``."""
    import dataclasses

    for f in dataclasses.fields(obj):
        if f.type in ("float", "float | None", float):
            object.__setattr__(obj, f.name, as_float(getattr(obj, f.name)))
