"""GLC heatmaps against a direct 2-D reference and the facts of gaze.md section 3."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.gaze.heatmap import (
    SIGMA,
    frame_gaze_types,
    frame_heatmap,
    step_maps_and_types,
    window_maps,
)
from gazenlq.store import GazeType
from gazenlq.timegrid import TimeGrid


def reference_map(x: float, y: float) -> np.ndarray:
    """Direct GLC recipe: 19x19 Gaussian kernel pasted at (round(64y), round(64x)), cut at
    the borders, normalised to sum 1."""
    k1 = np.exp(-(np.arange(-9, 10) ** 2) / (2 * 3.2**2))
    k1 /= k1.sum()
    kernel = np.outer(k1, k1)
    out = np.zeros((64 + 19, 64 + 19))  # padded by 9 before, 10 after (centre 64 at x = 1)
    cy, cx = int(np.rint(y * 64)), int(np.rint(x * 64))
    out[cy:cy + 19, cx:cx + 19] = kernel
    out = out[9:73, 9:73]
    return out / out.sum() if out.sum() > 0 else np.full((64, 64), 1 / 4096)


def test_kernel_facts():
    assert pytest.approx(3.2) == SIGMA
    m = frame_heatmap(0.5, 0.5)
    assert m.sum() == pytest.approx(1.0)
    assert m.max() == pytest.approx(0.01563, abs=2e-5)
    assert (m > 0.001).sum() == 177
    np.testing.assert_allclose(frame_heatmap(0.3, 0.7, tracked=False), 1 / 4096)
    assert np.unravel_index(frame_heatmap(0.25, 0.75).argmax(), (64, 64)) == (48, 16)


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_matches_direct_reference(x, y):
    np.testing.assert_allclose(frame_heatmap(x, y), reference_map(x, y), atol=1e-12)


def test_window_average_is_mean_of_frames():
    rng = np.random.default_rng(0)
    x, y = rng.random((3, 32)), rng.random((3, 32))
    tracked = rng.random((3, 32)) > 0.2
    got = window_maps(x, y, tracked)
    for s in range(3):
        want = np.mean([frame_heatmap(x[s, f], y[s, f], bool(tracked[s, f]))
                        for f in range(32)], axis=0)
        np.testing.assert_allclose(got[s], want, atol=1e-12)


def test_frame_types():
    x = np.array([0.5, 0.51, 0.9, 0.9, 1.2, 0.5])
    y = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    tracked = np.array([True, True, True, True, True, False])
    t = frame_gaze_types(x, y, tracked)
    # 0.01 * 1088 = 10.9 px -> fixation; 0.39 * 1088 = 424 px -> saccade; x > 1 -> truncated
    assert t.tolist() == [GazeType.FIXATION, GazeType.FIXATION, GazeType.SACCADE,
                          GazeType.FIXATION, GazeType.TRUNCATED, GazeType.UNTRACKED]


def test_step_maps_follow_the_time_grid():
    grid = TimeGrid(30.0, 32, 16)
    frames = 16 * 9 + 32 - 10  # the stream ends 10 frames before step 9's window does
    x = np.where(np.arange(frames) < 64, 0.2, 0.8)
    y = np.full(frames, 0.5)
    maps, types = step_maps_and_types(x, y, np.ones(frames, bool), grid, 0, 10)
    np.testing.assert_allclose(maps[0], frame_heatmap(0.2, 0.5))  # frames 0-31
    np.testing.assert_allclose(maps[3], 0.5 * frame_heatmap(0.2, 0.5)
                               + 0.5 * frame_heatmap(0.8, 0.5))  # frames 48-63 | 64-79
    np.testing.assert_allclose(maps[9], (22 * frame_heatmap(0.8, 0.5) + 10 / 4096) / 32)
    assert types[:9].tolist() == [GazeType.FIXATION] * 9 and types[9] == GazeType.FIXATION
    # steps 11-12 cover frames 176-223: all past the end of the stream
    maps, types = step_maps_and_types(x, y, np.ones(frames, bool), grid, 11, 2)
    assert (types == GazeType.UNTRACKED).all()
    np.testing.assert_allclose(maps, 1 / 4096)
