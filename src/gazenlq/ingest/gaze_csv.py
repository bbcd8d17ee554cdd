"""Ego4D gaze CSVs (gaze.md section 2) -> per-frame gaze on the video's 30 fps frames.

Time alignment (GLC, gaze.md section 3): frame ``i`` sits at ``i / fps`` seconds and takes the
sample nearest in time (a tie takes the later sample, as GLC does). Time is read from
``canonical_timestamp_s``, seconds from the start of the canonical video, the video the
Ego4D features are extracted from; GLC reads ``component_timestamp_s``, which is the same
clock for a video recorded in one component. ``world_index`` and ``confidence`` are not
used (GLC uses neither).

Gaps: a frame is tracked only when its nearest sample lies within half a frame period
(``MAX_GAP_FRAMES = 0.5``: 16.7 ms at 30 fps) of the frame time, i.e. some sample falls in
the frame's own time slot. At ~250 Hz that slot holds about 8 samples, so only dropouts of
a frame or more make frames untracked; frames after the stream ends (or before it starts)
are untracked by the same rule. Untracked frames keep the nearest sample's position, which
the maps ignore (uniform) and the gaze types override.

Coordinates: Pupil normalised scene coordinates, origin bottom-left, so image
``x = norm_pos_x`` and ``y = 1 - norm_pos_y``, returned unclipped: values outside [0, 1]
become "truncated" frames in :func:`gazenlq.gaze.heatmap.frame_gaze_types`, which also
clips them for the maps.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazenlq.errors import GazeNLQError

TIME_COLUMN = "canonical_timestamp_s"
X_COLUMN, Y_COLUMN = "norm_pos_x", "norm_pos_y"
REQUIRED_COLUMNS = (TIME_COLUMN, X_COLUMN, Y_COLUMN)
MAX_GAP_FRAMES = 0.5
"""Largest distance, in frame periods, from a frame's time to its nearest sample."""


@dataclass(frozen=True)
class GazeSamples:
    """A gaze stream sorted by time: seconds and raw image coordinates (not clipped)."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


def read_gaze_csv(path: str | os.PathLike) -> GazeSamples:
    """Read the time and position columns of an Ego4D gaze CSV (header row required).

    Rows whose time or position is empty or NaN are dropped (no sample); a value that is
    not a number, a short row or a missing column raises :class:`GazeNLQError`.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise GazeNLQError(f"{path}: empty file, expected an Ego4D gaze CSV with a "
                                   "header row")
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise GazeNLQError(f"{path}: missing column(s) {', '.join(missing)} (an Ego4D "
                                   f"gaze CSV has {', '.join(REQUIRED_COLUMNS)}, ...)")
            idx = [header.index(c) for c in REQUIRED_COLUMNS]
            need = max(idx) + 1
            cols: list[list[str]] = [[] for _ in idx]
            lines: list[int] = []
            for row in reader:
                if not row:
                    continue
                if len(row) < need:
                    raise GazeNLQError(f"{path}: line {reader.line_num} has {len(row)} fields, "
                                       f"expected {len(header)}")
                for col, i in zip(cols, idx):
                    col.append(row[i])
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GazeNLQError(f"{path}: cannot read as a CSV file ({exc})") from None
    t, x, ny = (_floats(col, name, lines, path) for col, name in zip(cols, REQUIRED_COLUMNS))
    keep = np.isfinite(t) & np.isfinite(x) & np.isfinite(ny)
    order = np.argsort(t[keep], kind="stable")
    return GazeSamples(t[keep][order], x[keep][order], 1.0 - ny[keep][order])


def _floats(values: list[str], name: str, lines: list[int], path: Path) -> np.ndarray:
    """Parse one column; empty cells become NaN, anything else non-numeric is an error."""
    try:
        return np.asarray(values, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values))
    for k, v in enumerate(values):
        try:
            out[k] = float(v) if v.strip() else np.nan
        except ValueError:
            raise GazeNLQError(f"{path}: line {lines[k]}: column {name!r} is not a number "
                               f"({v[:40]!r})") from None
    return out


def frame_gaze(samples: GazeSamples, num_frames: int,
               fps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame image ``x, y`` (unclipped) and ``tracked`` for frames ``0 .. num_frames-1``
    at ``i / fps`` seconds: the nearest sample, tracked when within ``MAX_GAP_FRAMES``."""
    if len(samples) == 0:
        zeros = np.zeros(num_frames)
        return zeros, zeros.copy(), np.zeros(num_frames, dtype=bool)
    ft = np.arange(num_frames) / fps
    after = np.searchsorted(samples.t, ft)
    lo = np.clip(after - 1, 0, len(samples) - 1)
    hi = np.clip(after, 0, len(samples) - 1)
    d_lo, d_hi = np.abs(ft - samples.t[lo]), np.abs(samples.t[hi] - ft)
    nearest = np.where(d_lo < d_hi, lo, hi)
    tracked = np.minimum(d_lo, d_hi) <= MAX_GAP_FRAMES / fps
    return samples.x[nearest], samples.y[nearest], tracked
