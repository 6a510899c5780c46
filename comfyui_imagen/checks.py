"""Scalar checks shared from the bottom of the library up (the diffusion core, settings, the runs): one home for
"a whole number in a range" and "a real number", accepting numpy / Python numbers alike, never a bool."""
from __future__ import annotations

import math
import numbers
from typing import Optional


def is_real(value) -> bool:
    """A finite real number (int, float, numpy scalar...), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value, name: str, low: int, high: Optional[int] = None, hint: str = "") -> int:
    """``value`` as an int when it is a whole number (not a bool) in [low, high]; ValueError naming it otherwise."""
    if not (is_real(value) and int(value) == value) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"from {low} to {high}"
        raise ValueError(f"{name} must be an integer {span}{hint}, got {value!r}")
    return int(value)
