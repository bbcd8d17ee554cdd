"""The one time grid: feature step index <-> seconds, used by every other module.

Ego4D features are computed on windows of ``window`` frames taken every ``stride`` frames of
``fps`` video: step ``i`` covers frames ``[stride*i, stride*i + window)`` and is located at
its centre, ``(stride*i + window/2) / fps`` seconds. A continuous step coordinate ``x`` (the
unit the models predict in) maps to seconds by the same affine rule, in both directions, at
training and at inference (the anchors' 16.043-frame stride and inference-only half-window
offset are deliberately not reproduced).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimeGrid:
    """Feature sampling of a video: frame rate, window and stride in frames."""

    fps: float = 30.0
    window: int = 32
    stride: int = 16

    def __post_init__(self) -> None:
        if not (self.fps > 0 and self.window > 0 and self.stride > 0):
            raise ValueError(f"invalid time grid {self}: fps, window and stride must be > 0")

    @property
    def steps_per_second(self) -> float:
        """Feature steps per second of video (1.875 for Ego4D)."""
        return self.fps / self.stride

    @property
    def seconds_per_step(self) -> float:
        return self.stride / self.fps

    @property
    def offset_s(self) -> float:
        """Seconds from a window's first frame to its centre."""
        return self.window / 2 / self.fps

    def to_seconds(self, steps):
        """Continuous step coordinate(s) -> seconds (step ``i`` -> centre of window ``i``)."""
        return np.asarray(steps, dtype=np.float64) * self.seconds_per_step + self.offset_s

    def to_steps(self, seconds):
        """Seconds -> continuous step coordinate(s); exact inverse of :meth:`to_seconds`."""
        return (np.asarray(seconds, dtype=np.float64) - self.offset_s) / self.seconds_per_step

    def step_frames(self, i: int) -> tuple[int, int]:
        """Half-open frame range ``[first, last)`` covered by step ``i``."""
        return self.stride * i, self.stride * i + self.window

    def step_bounds_s(self, i):
        """Start and end in seconds of the window(s) of step(s) ``i``."""
        start = np.asarray(i, dtype=np.float64) * self.seconds_per_step
        return start, start + self.window / self.fps

    def num_frames(self, duration_s: float) -> int:
        """Whole frames in a video of ``duration_s`` seconds (tolerant to float noise)."""
        return math.floor(duration_s * self.fps + 1e-6)

    def num_steps(self, duration_s: float) -> int:
        """Number of complete feature windows in a video of ``duration_s`` seconds."""
        frames = self.num_frames(duration_s)
        return 0 if frames < self.window else (frames - self.window) // self.stride + 1

    def clip_slice(self, start_s: float, end_s: float) -> slice:
        """Official Ego4D slicing of clip features out of video features.

        ``int(t0 * steps_per_second)`` to ``int(t1 * steps_per_second)``, end inclusive.
        """
        first = int(start_s * self.steps_per_second)
        last = int(end_s * self.steps_per_second)
        return slice(first, last + 1)

    def clip_steps(self, start_s: float, end_s: float, num_steps: int) -> tuple[int, int]:
        """Steps ``[first, stop)`` of a clip inside its video's features (official slicing,
        clamped to the video's ``num_steps``)."""
        sl = self.clip_slice(start_s, end_s)
        return min(sl.start, num_steps), min(sl.stop, num_steps)

    def clip(self, start_s: float, end_s: float, num_steps: int) -> ClipSpan:
        """The clip ``[start_s, end_s]`` (video seconds) of a video with ``num_steps`` steps:
        its feature steps and the conversions between them and clip seconds."""
        first, stop = self.clip_steps(start_s, end_s, num_steps)
        return ClipSpan(self, float(start_s), float(end_s), first, stop)

    def segments_to_seconds(self, segments, duration_s: float) -> np.ndarray:
        """``[N, 2]`` segments in step coordinates -> seconds, clamped to ``[0, duration_s]``."""
        return np.clip(self.to_seconds(segments), 0.0, duration_s)


@dataclass(frozen=True)
class ClipSpan:
    """A clip inside its video's features: the one "clip window -> steps -> clip seconds" rule.

    ``[first, stop)`` are the clip's steps (official slicing, :meth:`TimeGrid.clip_steps`);
    models see them as local steps ``0 .. stop - first`` and answer in clip seconds."""

    grid: TimeGrid
    start_s: float
    end_s: float
    first: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.first

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def to_steps(self, t_clip):
        """Clip seconds -> continuous step coordinate local to the clip's steps."""
        return self.grid.to_steps(np.asarray(t_clip, dtype=np.float64) + self.start_s) - self.first

    def to_seconds(self, x, *, clamp: bool = True):
        """Local step coordinate(s) -> clip seconds (exact inverse of :meth:`to_steps`),
        clamped to ``[0, duration_s]`` unless ``clamp`` is False."""
        t = self.grid.to_seconds(np.asarray(x, dtype=np.float64) + self.first) - self.start_s
        return np.clip(t, 0.0, self.duration_s) if clamp else t


EGO4D = TimeGrid()
"""Ego4D's pre-extracted feature grid: 30 fps, 32-frame windows, stride 16 (1.875 steps/s)."""
