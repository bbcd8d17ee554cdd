import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gazenlq.timegrid import EGO4D, TimeGrid


def test_ego4d_grid_known_values():
    assert EGO4D.steps_per_second == 1.875
    assert EGO4D.to_seconds(0) == pytest.approx(16 / 30)  # centre of frames [0, 32)
    assert EGO4D.to_seconds(10) == pytest.approx((160 + 16) / 30)
    assert EGO4D.step_frames(3) == (48, 80)
    start, end = EGO4D.step_bounds_s(3)
    assert (start, end) == pytest.approx((1.6, 80 / 30))
    assert EGO4D.to_seconds(3) == pytest.approx((start + end) / 2)
    assert EGO4D.num_steps(480.0) == (14400 - 32) // 16 + 1 == 899
    assert EGO4D.num_steps(1.0) == 0  # 30 frames < one 32-frame window
    assert EGO4D.clip_slice(0.0, 480.0) == slice(0, 901)  # official: int(t * 1.875), inclusive
    assert EGO4D.clip_slice(2340.0, 2820.0) == slice(4387, 5288)


@given(st.floats(-1e5, 1e5, allow_nan=False), st.sampled_from([EGO4D, TimeGrid(25.0, 16, 8)]))
def test_round_trip(x, grid):
    assert grid.to_steps(grid.to_seconds(x)) == pytest.approx(x, abs=1e-6)


def test_no_drift_over_long_videos():
    # the anchors' 16.043-frame stride drifts ~1.3 s by 480 s; ours is exact
    assert EGO4D.to_seconds(899) - EGO4D.to_seconds(0) == pytest.approx(899 * 16 / 30)


def test_segments_to_seconds_clamps():
    segs = np.array([[-5.0, 2.0], [890.0, 950.0]])
    out = EGO4D.segments_to_seconds(segs, 480.0)
    assert out[0, 0] == 0.0 and out[1, 1] == 480.0
    assert out[0, 1] == pytest.approx((32 + 16) / 30)


def test_invalid_grid():
    with pytest.raises(ValueError):
        TimeGrid(30.0, 0, 16)


@given(st.floats(0, 1200), st.floats(0, 3600))
def test_clip_local_coordinates_round_trip(t_clip, clip_start):
    span = EGO4D.clip(clip_start, clip_start + 1200.0, 10**6)
    x = span.to_steps(t_clip)
    assert span.to_seconds(x) == pytest.approx(t_clip, abs=1e-6)
    # the local coordinate is the video coordinate shifted by the clip's first step
    assert x + span.first == pytest.approx(float(EGO4D.to_steps(clip_start + t_clip)), abs=1e-6)


def test_clip_span_clamps_seconds_to_the_clip():
    span = EGO4D.clip(2340.0, 2820.0, 10**6)
    assert (span.first, span.stop, span.length, span.duration_s) == (4387, 5288, 901, 480.0)
    far = span.to_steps(np.array([-10.0, 500.0]))
    assert span.to_seconds(far).tolist() == [0.0, 480.0]
    assert span.to_seconds(far, clamp=False) == pytest.approx([-10.0, 500.0])


def test_clip_steps_clamped():
    assert EGO4D.clip_steps(0.0, 480.0, 899) == (0, 899)
    assert EGO4D.clip_steps(2340.0, 2820.0, 10**6) == (4387, 5288)
