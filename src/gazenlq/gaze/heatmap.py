"""GLC gaze heatmaps (gaze.md section 3): per-frame Gaussian maps, window-averaged per step.

A frame's map is the outer product of two truncated, normalised 1-D Gaussian profiles, so a
window average of F frames is one ``[64, F] @ [F, 64]`` product: exact, and fast enough to
draw hours of 250 Hz gaze.
"""

from __future__ import annotations

import numpy as np

from gazenlq.store.schema import MAP_SIZE, GazeType
from gazenlq.timegrid import TimeGrid

KERNEL_SIZE = 19
SIGMA = 0.3 * ((KERNEL_SIZE - 1) * 0.5 - 1) + 0.8  # OpenCV's default for size 19: 3.2 cells
FRAME_WIDTH_PX, FRAME_HEIGHT_PX = 1088, 1080
SACCADE_PX = 40.0

_HALF = KERNEL_SIZE // 2
_TAPS = np.exp(-(np.arange(-_HALF, _HALF + 1) ** 2) / (2 * SIGMA**2))
_TAPS /= _TAPS.sum()


def profiles(coord: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """1-D profiles ``[N, 64]`` for image coordinates in [0, 1]: the kernel centred at
    ``round(coord * 64)``, truncated at the borders and renormalised; uniform where invalid."""
    coord = np.asarray(coord, dtype=np.float64)
    centre = np.rint(coord * MAP_SIZE).astype(np.int64)
    offsets = np.arange(MAP_SIZE)[None, :] - centre[:, None] + _HALF
    inside = (offsets >= 0) & (offsets < KERNEL_SIZE)
    prof = np.where(inside, _TAPS[np.clip(offsets, 0, KERNEL_SIZE - 1)], 0.0)
    total = prof.sum(axis=1, keepdims=True)
    ok = total[:, 0] > 0
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    return np.where(ok[:, None], prof / np.where(total > 0, total, 1.0), 1.0 / MAP_SIZE)


def frame_heatmap(x: float, y: float, tracked: bool = True) -> np.ndarray:
    """One frame's 64 x 64 map (rows = image y, columns = image x), summing to 1."""
    valid = np.array([tracked])
    return np.outer(profiles(np.array([y]), valid)[0], profiles(np.array([x]), valid)[0])


def window_maps(x: np.ndarray, y: np.ndarray, tracked: np.ndarray) -> np.ndarray:
    """Average frame maps over windows: ``x, y, tracked`` are ``[S, F]`` -> ``[S, 64, 64]``."""
    s, f = x.shape
    px = profiles(x.ravel(), tracked.ravel()).reshape(s, f, MAP_SIZE)
    py = profiles(y.ravel(), tracked.ravel()).reshape(s, f, MAP_SIZE)
    return np.einsum("sfi,sfj->sij", py, px, optimize=True) / f


def frame_gaze_types(x: np.ndarray, y: np.ndarray, tracked: np.ndarray) -> np.ndarray:
    """GLC's per-frame categories from raw image coordinates (before clipping)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.full(len(x), GazeType.FIXATION, dtype=np.uint8)
    dx = np.diff(np.clip(x, 0, 1), prepend=np.clip(x[:1], 0, 1)) * FRAME_WIDTH_PX
    dy = np.diff(np.clip(y, 0, 1), prepend=np.clip(y[:1], 0, 1)) * FRAME_HEIGHT_PX
    out[np.hypot(dx, dy) > SACCADE_PX] = GazeType.SACCADE
    out[(x < 0) | (x > 1) | (y < 0) | (y > 1)] = GazeType.TRUNCATED
    out[~np.asarray(tracked, dtype=bool)] = GazeType.UNTRACKED
    return out


def step_frame_index(grid: TimeGrid, first_step: int, num_steps: int) -> np.ndarray:
    """Frame indices ``[num_steps, window]`` of the steps ``first_step ...`` on ``grid``."""
    steps = np.arange(first_step, first_step + num_steps)
    return steps[:, None] * grid.stride + np.arange(grid.window)[None, :]


def step_maps_and_types(x: np.ndarray, y: np.ndarray, tracked: np.ndarray, grid: TimeGrid,
                        first_step: int, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-step averaged maps ``[S, 64, 64]`` and majority gaze types ``[S]`` from per-frame
    raw image coordinates (frames past the end of ``x`` count as untracked)."""
    idx = step_frame_index(grid, first_step, num_steps)
    inside = idx < len(x)
    safe = np.minimum(idx, max(len(x) - 1, 0))
    fx, fy = x[safe], y[safe]
    ftracked = tracked[safe] & inside
    maps = window_maps(np.clip(fx, 0, 1), np.clip(fy, 0, 1), ftracked)
    types = frame_gaze_types(x, y, tracked)[safe]
    types[~inside] = GazeType.UNTRACKED
    counts = np.stack([(types == t).sum(axis=1) for t in GazeType], axis=1)
    return maps, np.argmax(counts, axis=1).astype(np.uint8)
