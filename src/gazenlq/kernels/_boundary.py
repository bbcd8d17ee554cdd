"""Normalisation and validation of the kernels' inputs at their Python entry points.

Numba compiles one machine-code specialisation per combination of argument types, and a
read-only, Fortran-ordered, float64 or byte-swapped array is a different type from a
writeable C-contiguous float32 one. Every entry point therefore converts its arrays with
:func:`as_array` (float32 or int64, C-contiguous, aligned, writeable; no copy when already
so) and its scalars to ``np.float32`` / ``int``, so that each kernel is compiled, cached and
loaded exactly once. Invalid inputs are rejected here with a ``ValueError`` naming the
offending argument, never inside a kernel.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numba import njit

from gazenlq.scalars import as_count

_INVALID_SCORE, _INVALID_COORD, _INVALID_ORDER = 1, 2, 3
_FLOAT32_MAX = np.float32(np.finfo(np.float32).max)
_BLAS = "scipy.linalg.cython_blas"  # the module Numba's start-up probes SciPy's BLAS with


def as_array(value: object, dtype: type[np.generic], name: str) -> np.ndarray:
    """``value`` as an aligned, writeable, C-contiguous ``dtype`` array (copied only if needed)."""
    try:
        arr = np.asarray(value)
        if dtype is np.int64 and arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"dtype {arr.dtype}")
        return np.require(arr, dtype=dtype, requirements=("C", "A", "W"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of {np.dtype(dtype).name}: {exc}") from None


def as_segments(segments: object, name: str = "segments") -> np.ndarray:
    """``(N, 2)`` float32 ``[start, end]`` rows."""
    arr = as_array(segments, np.float32, name)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2), got {arr.shape}")
    return arr


def as_scores(scores: object, n: int, name: str = "scores") -> np.ndarray:
    """``(n,)`` float32 vector matching ``n`` segments."""
    arr = as_array(scores, np.float32, name)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the segments, got {arr.shape}")
    return arr


def check_candidates(segments: np.ndarray, scores: np.ndarray, *, allow_negative: bool,
                     name: str = "segments") -> None:
    """Raise ``ValueError`` unless every segment is finite with ``end >= start`` (and a finite
    float32 length) and every score is finite (and ``>= 0`` unless ``allow_negative``)."""
    if _all_valid(segments, scores, allow_negative):
        return
    code, i = _first_invalid(segments, scores, allow_negative)
    if code == _INVALID_SCORE:
        rule = "finite" if allow_negative else "finite and >= 0"
        raise ValueError(f"scores[{i}] = {scores[i]}: scores must be {rule}")
    if code == _INVALID_COORD:
        raise ValueError(f"{name}[{i}] = {segments[i].tolist()} is not finite")
    if code == _INVALID_ORDER:
        raise ValueError(f"{name}[{i}] = {segments[i].tolist()}: end must be >= start "
                         "(and the length finite in float32)")


def start_numba() -> None:
    """Pay Numba's one-off per-process start-up now (about 0.2 s: on a process's first
    dispatch it imports its whole implementation), through the smallest kernel every entry
    point uses, so that the process's first query does not pay it."""
    with _without_blas_probe():
        _all_valid(np.zeros((1, 2), np.float32), np.zeros(1, np.float32), False)


@contextmanager
def _without_blas_probe() -> Iterator[None]:
    """Numba's start-up probes SciPy's BLAS by importing ``scipy.linalg`` (0.15 s of a new
    process's first answer) only to pick a BLAS inner product for ``np.convolve`` and
    ``np.correlate``, which no kernel here calls. While these kernels start, in a process
    that has not imported SciPy's BLAS, the probe finds it absent (those two then use a
    plain loop); functions that need BLAS (``np.dot``, ``np.linalg``) still import it
    when they are compiled."""
    if _BLAS in sys.modules or "numba.np.arraymath" in sys.modules:
        yield
        return
    sys.modules[_BLAS] = None  # type: ignore[assignment]  # import -> ModuleNotFoundError
    try:
        yield
    finally:
        if sys.modules.get(_BLAS, False) is None:
            del sys.modules[_BLAS]


@njit(cache=True, nogil=True)
def _all_valid(segments, scores, allow_negative):
    """Whether every candidate is valid: one branch-free pass that LLVM vectorises (a length
    ``end - start`` that is finite and ``>= 0`` implies finite coordinates; NaN fails every
    comparison)."""
    low = -_FLOAT32_MAX if allow_negative else np.float32(0.0)
    ok = True
    for i in range(scores.shape[0]):
        s = scores[i]
        length = segments[i, 1] - segments[i, 0]
        ok &= (s >= low) & (s <= _FLOAT32_MAX) & (length >= 0) & (length <= _FLOAT32_MAX)
    return ok


@njit(cache=True, nogil=True)
def _first_invalid(segments, scores, allow_negative):
    """(code, index) of the first invalid candidate, ``(0, -1)`` when all are valid; only run
    to name the culprit once :func:`_all_valid` has failed."""
    for i in range(scores.shape[0]):
        s = scores[i]
        if not math.isfinite(s) or (s < 0 and not allow_negative):
            return _INVALID_SCORE, i
        x1 = segments[i, 0]
        x2 = segments[i, 1]
        if not (math.isfinite(x1) and math.isfinite(x2)):
            return _INVALID_COORD, i
        length = x2 - x1
        if not (length >= 0 and math.isfinite(length)):
            return _INVALID_ORDER, i
    return 0, -1


def as_top_k(top_k: int | None, n: int) -> int:
    """Number of rows to emit out of ``n``: ``min(top_k, n)``, ``n`` for ``None``."""
    return n if top_k is None else min(as_count(top_k, "top_k"), n)
