"""Checked scalars for configs and kernel entry points: one rule for numbers given by users.

Plain Python and numpy only (no Numba), so torch-free, Numba-free modules such as
``gazenlq.bundle`` can validate their configs with the same rules the kernels apply.
"""

from __future__ import annotations

import math
import operator

import numpy as np


def as_f32(value: float, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> np.float32:
    """A finite scalar in ``[low, high]`` (``(low, high]`` with ``low_open``) as ``np.float32``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    too_low = low is not None and (x <= low if low_open else x < low)
    if not math.isfinite(x) or too_low or (high is not None and x > high):
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        rule = " and ".join(r for r in (lo, hi) if r) or "finite"
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return np.float32(x)


def as_count(value: object, name: str) -> int:
    """A non-negative Python int (bools rejected)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
    if n < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {n}")
    return n
