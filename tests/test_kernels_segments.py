"""IoU, hard NMS, decoding and the section-5 pipeline: hand vectors and references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gazenlq.kernels import (
    Method,
    PostprocessConfig,
    decode_rows,
    decode_segments,
    iou_matrix,
    nms,
    postprocess_query,
    soft_nms,
)
from gazenlq.kernels import decode as decode_module
from gazenlq.kernels import softnms as segments_module
from gazenlq.timegrid import EGO4D
from tests.kernel_reference import decode_reference, iou_one_to_many

SETTINGS = {"deadline": None, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


def sigmoid32(x: float) -> np.float32:
    return np.float32(1 / (1 + math.exp(-x)))


# --- IoU ------------------------------------------------------------------------------------

def test_iou_matrix_hand_vector() -> None:
    a = np.array([[0, 10], [5, 5]], np.float32)
    b = np.array([[5, 15], [0, 10], [20, 30], [5, 5], [2, 4]], np.float32)
    want = [[5 / 15, 1, 0, 0, 2 / 10],  # zero-length segments overlap nothing
            [0, 0, 0, 0, 0]]
    got = iou_matrix(a, b)
    assert got.dtype == np.float32 and got.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert iou_matrix(np.empty((0, 2)), b).shape == (0, 5)


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), min_size=1, max_size=12),
       st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), min_size=0, max_size=12))
def test_iou_matrix_matches_reference_and_is_symmetric(a, b) -> None:
    sa = np.array([[s, s + n] for s, n in a], np.float32) / np.float32(4)
    sb = np.array([[s, s + n] for s, n in b], np.float32).reshape(-1, 2) / np.float32(4)
    got = iou_matrix(sa, sb)
    for i, seg in enumerate(sa):
        np.testing.assert_array_equal(got[i], iou_one_to_many(seg, sb))
    np.testing.assert_array_equal(got, iou_matrix(sb, sa).T)
    assert np.all((got >= 0) & (got <= 1))


def test_iou_matrix_rejects_bad_segments() -> None:
    with pytest.raises(ValueError, match=r"b\[0\].*end must be >= start"):
        iou_matrix([[0, 1]], [[2, 1]])
    with pytest.raises(ValueError, match=r"a must have shape \(N, 2\)"):
        iou_matrix([0, 1], [[0, 1]])


# --- hard NMS -------------------------------------------------------------------------------

NMS_SEGS = np.array([[0, 10], [1, 11], [20, 30], [2, 9]], np.float32)
NMS_SCORES = np.array([0.9, 0.8, 0.7, 0.95], np.float32)


def test_nms_hand_vector() -> None:
    # 3 ([2, 9]) first; IoU 7/10 with 0 and with 1 suppresses both; 2 is apart
    out = nms(NMS_SEGS, NMS_SCORES, 0.5)
    np.testing.assert_array_equal(out.indices, [3, 2])
    np.testing.assert_array_equal(out.scores, NMS_SCORES[[3, 2]])
    np.testing.assert_array_equal(out.segments, NMS_SEGS[[3, 2]])
    np.testing.assert_array_equal(nms(NMS_SEGS, NMS_SCORES, 0.75).indices, [3, 0, 2])
    np.testing.assert_array_equal(nms(NMS_SEGS, NMS_SCORES, 0.5, top_k=1).indices, [3])
    np.testing.assert_array_equal(nms(NMS_SEGS, NMS_SCORES, 0.0).indices, [3])  # IoU 0 >= 0


def test_nms_ties_go_to_the_lowest_index_and_negative_scores_are_fine() -> None:
    segs = np.array([[0, 1], [0, 1], [5, 6], [5, 6]], np.float32)
    np.testing.assert_array_equal(nms(segs, [-1, -1, 2, 2], 0.5).indices, [2, 0])
    with pytest.raises(ValueError, match="finite"):
        nms(segs, [0, np.nan, 0, 0], 0.5)


@settings(max_examples=500, **SETTINGS)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 8), st.integers(0, 6)),
                max_size=25),
       st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]))
def test_nms_is_greedy_by_score(rows, thr) -> None:
    segs = np.array([[s, s + n] for s, n, _ in rows], np.float32).reshape(-1, 2)
    scores = np.array([c for *_, c in rows], np.float32)
    out = nms(segs, scores, thr)
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for i in order:  # straightforward greedy loop
        if all(iou_one_to_many(segs[k], segs[i:i + 1])[0] < np.float32(thr) for k in kept):
            kept.append(int(i))
    np.testing.assert_array_equal(out.indices, kept)


# --- decoding -------------------------------------------------------------------------------

# level 0: stride 1, points 0..3; level 1: stride 2, points 0 and 2
LOGITS = np.array([0.0, -10.0, 2.0, 2.0, 1.0, -np.inf], np.float32)
DISTANCES = np.array([[1, 1], [1, 1], [0.5, 1.5], [0.0004, 0.0004], [1, 2], [1, 1]],
                     np.float32)
SIZES, STRIDES = [4, 2], [1, 2]


def test_decode_hand_vector() -> None:
    c = decode_segments(LOGITS, DISTANCES, SIZES, STRIDES)
    # point 1 (p = 4.5e-5) and the masked point 5 fail the 0.001 threshold; point 3's
    # segment is 0.0008 steps long; level 0 comes by decreasing probability: 2, then 0
    np.testing.assert_array_equal(c.sources, [2, 0, 4])
    np.testing.assert_allclose(c.segments, [[1.5, 3.5], [-1, 1], [-2, 4]])
    np.testing.assert_array_equal(c.scores, [sigmoid32(2), sigmoid32(0), sigmoid32(1)])
    assert c.segments.dtype == np.float32 and c.sources.dtype == np.int64


def test_decode_top_k_per_level_runs_before_the_length_filter() -> None:
    # level 0 keeps its 2 most probable points (2 and 3, tied: point order); 3 is too short
    c = decode_segments(LOGITS, DISTANCES, SIZES, STRIDES, pre_nms_topk=2)
    np.testing.assert_array_equal(c.sources, [2, 4])
    c = decode_segments(LOGITS, DISTANCES, SIZES, STRIDES, pre_nms_topk=2, min_length=0.0001)
    np.testing.assert_array_equal(c.sources, [2, 3, 4])
    np.testing.assert_allclose(c.segments[1], [2.9996, 3.0004])
    c = decode_segments(LOGITS, DISTANCES, SIZES, STRIDES, score_threshold=0.6)
    np.testing.assert_array_equal(c.sources, [2, 4])  # p = 0.5 and 0.73 vs 0.6


def test_decode_explicit_points_and_empty_levels() -> None:
    points = np.array([0.5, 1.5, 2.5, 3.5, 1, 3], np.float32)
    c = decode_segments(LOGITS, DISTANCES, SIZES, STRIDES, points=points)
    np.testing.assert_allclose(c.segments, [[2, 4], [-0.5, 1.5], [-1, 5]])
    c = decode_segments(np.empty(0), np.empty((0, 2)), [0, 0], [1, 2])
    assert c.segments.shape == (0, 2)


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), st.data())
def test_decode_matches_reference(sizes, data) -> None:
    m = sum(sizes)
    logits = np.array(data.draw(st.lists(st.integers(-40, 40), min_size=m, max_size=m)),
                      np.float32) / np.float32(4)
    dist = np.array(data.draw(st.lists(st.integers(0, 12), min_size=2 * m, max_size=2 * m)),
                    np.float32).reshape(m, 2) / np.float32(8)
    strides = [2**level for level in range(len(sizes))]
    kwargs = {"score_threshold": data.draw(st.sampled_from([0.001, 0.1, 0.5])),
              "pre_nms_topk": data.draw(st.integers(0, 14)),
              "min_length": data.draw(st.sampled_from([0.001, 0.2, 1.0]))}
    got = decode_segments(logits, dist, sizes, strides, **kwargs)
    want = decode_reference(logits, dist, sizes, strides, **kwargs)
    np.testing.assert_array_equal(got.sources, want[2])
    np.testing.assert_array_equal(got.segments, want[0])
    np.testing.assert_allclose(got.scores, want[1], rtol=1e-6)


@settings(max_examples=100, **SETTINGS)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(0, 5), st.data())
def test_decode_rows_is_decode_segments_row_by_row(sizes, rows, data) -> None:
    """The search's batched decoding: one kernel call, each row what decode_segments gives
    it alone (masked points as -inf included)."""
    m = sum(sizes)
    logits = np.array(data.draw(st.lists(st.integers(-40, 40), min_size=rows * m,
                                         max_size=rows * m)), np.float32).reshape(rows, m) / 4
    logits[logits < -9] = -np.inf
    dist = np.array(data.draw(st.lists(st.integers(0, 12), min_size=2 * rows * m,
                                       max_size=2 * rows * m)),
                    np.float32).reshape(rows, m, 2) / np.float32(8)
    strides = [2**level for level in range(len(sizes))]
    kwargs = {"score_threshold": data.draw(st.sampled_from([0.001, 0.1, 0.5])),
              "pre_nms_topk": data.draw(st.integers(0, 14)),
              "min_length": data.draw(st.sampled_from([0.001, 0.2, 1.0]))}
    got = decode_rows(logits, dist, sizes, strides, **kwargs)
    assert len(got) == rows
    for r in range(rows):
        want = decode_segments(logits[r], dist[r], sizes, strides, **kwargs)
        for a, b in zip(got[r], want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("change", "match"), [
    ({"logits": LOGITS}, r"logits must have shape \(B, M\)"),
    ({"logits": np.array([[0, 0, np.nan, 0, 0, 0]])}, r"logits\(0, 2\) is nan"),
    ({"distances": DISTANCES}, r"distances must have shape \(1, 6, 2\)"),
    ({"distances": np.full((1, 6, 2), np.inf)}, r"distances must be finite"),
    ({"level_sizes": [4, 3]}, r"sum to 7"),
    ({"strides": [1, 0]}, r"strides must be finite and > 0"),
    ({"pre_nms_topk": -1}, r"pre_nms_topk"),
])
def test_decode_rows_rejects_bad_inputs(change, match) -> None:
    args = {"logits": LOGITS[None], "distances": DISTANCES[None], "level_sizes": SIZES,
            "strides": STRIDES, **change}
    with pytest.raises(ValueError, match=match):
        decode_rows(**args)


@pytest.mark.parametrize(("change", "match"), [
    ({"logits": np.array([np.nan, 0, 0, 0, 0, 0])}, r"logits\[0\] is nan"),
    ({"logits": np.zeros((6, 1))}, r"logits must have shape \(M,\)"),
    ({"distances": np.ones((6, 3))}, r"distances must have shape \(6, 2\)"),
    ({"distances": np.full((6, 2), np.inf)}, r"distances\[0\].*not finite"),
    ({"level_sizes": [4, 3]}, r"sum to 7"),
    ({"level_sizes": [4, -2, 4]}, r"non-negative"),
    ({"strides": [1]}, r"one entry per level"),
    ({"strides": [1, 0]}, r"strides must be finite and > 0"),
    ({"points": np.zeros(5)}, r"points must have shape \(6,\)"),
    ({"pre_nms_topk": -1}, r"pre_nms_topk"),
    ({"score_threshold": 1.5}, r"score_threshold"),
])
def test_decode_rejects_bad_inputs(change, match) -> None:
    args = {"logits": LOGITS, "distances": DISTANCES, "level_sizes": SIZES,
            "strides": STRIDES, **change}
    with pytest.raises(ValueError, match=match):
        decode_segments(**args)


# --- section-5 pipeline ---------------------------------------------------------------------

def test_postprocess_config_defaults_are_section_5() -> None:
    cfg = PostprocessConfig()
    assert (cfg.score_threshold, cfg.pre_nms_topk, cfg.min_length) == (0.001, 2000, 0.001)
    assert (cfg.method, cfg.sigma, cfg.min_score, cfg.top_k) == (Method.GAUSSIAN, 0.75,
                                                                 0.001, 5)
    assert cfg.voting_thresh is None
    assert PostprocessConfig(method="linear").method is Method.LINEAR
    for bad in ({"sigma": 0}, {"top_k": -1}, {"method": "box"}, {"voting_thresh": 3}):
        with pytest.raises(ValueError):
            PostprocessConfig(**bad)


def test_postprocess_query_is_decode_then_soft_nms() -> None:
    rng = np.random.default_rng(7)
    sizes = [64 // 2**level for level in range(4)]
    strides = [2**level for level in range(4)]
    logits = rng.normal(-2, 2, sum(sizes)).astype(np.float32)
    dist = rng.uniform(0, 3, (sum(sizes), 2)).astype(np.float32)
    cfg = PostprocessConfig(top_k=7, voting_thresh=0.8)
    out = postprocess_query(logits, dist, sizes, strides, config=cfg)
    cand = decode_segments(logits, dist, sizes, strides)
    kept = soft_nms(cand.segments, cand.scores, top_k=7, sigma=0.75, min_score=0.001,
                    voting_thresh=0.8)
    np.testing.assert_array_equal(out.indices, cand.sources[kept.indices])
    np.testing.assert_array_equal(out.scores, kept.scores)
    np.testing.assert_array_equal(out.segments, kept.segments)
    assert len(out.indices) == 7
    seconds = EGO4D.segments_to_seconds(out.segments, duration_s=30.0)
    assert seconds.shape == (7, 2) and np.all((seconds >= 0) & (seconds <= 30))


def test_postprocess_query_defaults_keep_five() -> None:
    out = postprocess_query(LOGITS, DISTANCES, SIZES, STRIDES)
    np.testing.assert_array_equal(out.indices, [2, 4, 0])  # only 3 candidates, by score
    assert postprocess_query(np.full(6, -np.inf), DISTANCES, SIZES, STRIDES).indices.size == 0


def test_segment_kernels_compile_once() -> None:
    iou_matrix(np.asfortranarray(NMS_SEGS), NMS_SEGS.astype(np.float64))
    nms(NMS_SEGS.tolist(), NMS_SCORES.astype(np.float64), 0.5, top_k=np.int64(2))
    decode_segments(LOGITS.astype(np.float64), DISTANCES.tolist(), SIZES, [1.0, 2.0])
    decode_rows(LOGITS[None].astype(np.float64), DISTANCES[None].tolist(), SIZES, [1.0, 2.0])
    for kernel in (segments_module._iou_matrix_into, segments_module._nms_into,
                   decode_module._decode_into, decode_module._decode_rows_into):
        assert len(kernel.signatures) == 1, kernel.signatures
