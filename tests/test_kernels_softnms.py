"""Soft-NMS kernels against the plain-NumPy reference, properties, hand vectors, cache."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gazenlq.kernels import Method, nms, soft_nms, soft_nms_batch
from gazenlq.kernels import _boundary as boundary_module
from gazenlq.kernels import softnms as softnms_module
from tests.kernel_reference import METHODS, soft_nms_reference, vote_reference

SETTINGS = {"deadline": None, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
PARAMS = {
    "method": st.sampled_from([*METHODS, Method.HARD, Method.LINEAR, Method.GAUSSIAN]),
    "iou_threshold": st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 1.0]),
    "sigma": st.sampled_from([0.05, 0.3, 0.5, 0.75, 2.0]),
    "min_score": st.sampled_from([0.0, 0.001, 0.05, 0.3, 0.6]),
}


@st.composite
def candidates(draw, max_n: int = 24, grid: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Float32 segments and scores. ``grid``: small integer grids, scaled exactly, so that
    tied scores and zero-length, nested and identical segments are common."""
    n = draw(st.integers(0, max_n))
    if grid:
        span, longest, levels = 16, 8, 8
        scale = np.float32(draw(st.sampled_from([0.25, 0.5, 1.0, 3.0])))
    else:
        span, longest, levels = 4096, 1024, 1_000_000
        scale = np.float32(1 / 16)
    ints = st.lists(st.integers(0, span), min_size=n, max_size=n)
    starts = np.array(draw(ints), np.float32)
    lengths = np.array(draw(st.lists(st.integers(0, longest), min_size=n, max_size=n)),
                       np.float32)
    scores = np.array(draw(st.lists(st.integers(0, levels), min_size=n, max_size=n)),
                      np.float32) / np.float32(levels)
    segments = np.stack([starts, starts + lengths], axis=1).reshape(n, 2) * scale
    return segments, scores


def method_name(method: Method | str) -> str:
    return method.name.lower() if isinstance(method, Method) else method


def assert_matches_reference(segments, scores, top_k, params) -> None:
    got = soft_nms(segments, scores, top_k=top_k, **params)
    ref = soft_nms_reference(segments, scores, top_k=top_k,
                             **{**params, "method": method_name(params["method"])})
    assert got.indices.dtype == np.int64 and got.scores.dtype == np.float32
    assert got.segments.dtype == np.float32 and got.segments.shape == (len(got.indices), 2)
    np.testing.assert_array_equal(got.indices, ref[0])
    np.testing.assert_allclose(got.scores, ref[1], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got.segments, segments[got.indices])
    assert np.all(np.diff(got.scores) <= 0), "emitted scores must never increase"


@pytest.mark.slow
@settings(max_examples=6000, **SETTINGS)
@given(data=candidates(), top_k=st.one_of(st.none(), st.integers(0, 26)), **PARAMS)
def test_matches_reference_on_tied_grids(data, top_k, **params) -> None:
    assert_matches_reference(*data, top_k, params)


@pytest.mark.slow
@settings(max_examples=2500, **SETTINGS)
@given(data=candidates(max_n=60, grid=False), top_k=st.one_of(st.none(), st.integers(0, 62)),
       **PARAMS)
def test_matches_reference_on_continuous_data(data, top_k, **params) -> None:
    assert_matches_reference(*data, top_k, params)


@settings(max_examples=800, **SETTINGS)
@given(queries=st.lists(candidates(max_n=16), min_size=0, max_size=6),
       top_k=st.one_of(st.none(), st.integers(0, 6)), **PARAMS)
def test_batch_equals_single_calls_and_reference(queries, top_k, **params) -> None:
    offsets = np.cumsum([0] + [len(s) for _, s in queries])
    segments = np.concatenate([q[0] for q in queries] or [np.empty((0, 2), np.float32)])
    scores = np.concatenate([q[1] for q in queries] or [np.empty(0, np.float32)])
    batch = soft_nms_batch(segments, scores, offsets, top_k=top_k, **params)
    assert len(batch) == len(queries) and batch.offsets[-1] == len(batch.indices)
    for q, (segs, sc) in enumerate(queries):
        one, single = batch.query(q), soft_nms(segs, sc, top_k=top_k, **params)
        for got, want in zip(one, single):
            np.testing.assert_array_equal(got, want)
        ref = soft_nms_reference(segs, sc, top_k=top_k,
                                 **{**params, "method": method_name(params["method"])})
        np.testing.assert_array_equal(one.indices, ref[0])
        np.testing.assert_allclose(one.scores, ref[1], rtol=1e-6, atol=0)


@settings(max_examples=1000, **SETTINGS)
@given(data=st.one_of(candidates(max_n=40), candidates(max_n=40, grid=False)),
       top_k=st.integers(0, 42), **PARAMS)
def test_top_k_is_prefix_of_full_pass(data, top_k, **params) -> None:
    full = soft_nms(*data, **params)
    head = soft_nms(*data, top_k=top_k, **params)
    for got, want in zip(head, full):
        np.testing.assert_array_equal(got, want[:top_k])


@settings(max_examples=500, **SETTINGS)
@given(data=candidates(max_n=60, grid=False), **PARAMS)
def test_emitted_scores_never_increase(data, **params) -> None:
    result = soft_nms(*data, **params)
    assert np.all(np.diff(result.scores) <= 0)
    assert np.all(result.scores[1:] >= np.float32(params["min_score"]))
    assert len(np.unique(result.indices)) == len(result.indices)


@settings(max_examples=1000, **SETTINGS)
@given(data=candidates(max_n=30), iou_threshold=PARAMS["iou_threshold"],
       top_k=st.one_of(st.none(), st.integers(0, 32)))
def test_hard_method_equals_hard_nms_without_ties(data, iou_threshold, top_k) -> None:
    segments, _ = data
    # distinct positive scores, all above min_score: no ties, nothing dropped but by IoU
    scores = (np.random.default_rng(len(segments)).permutation(len(segments)) + 1).astype(
        np.float32) / np.float32(64)
    soft = soft_nms(segments, scores, method="hard", iou_threshold=iou_threshold,
                    min_score=1 / 128, top_k=top_k)
    hard = nms(segments, scores, iou_threshold, top_k=top_k)
    for got, want in zip(soft, hard):
        np.testing.assert_array_equal(got, want)


@settings(max_examples=500, **SETTINGS)
@given(data=candidates(max_n=30), iou_threshold=PARAMS["iou_threshold"])
def test_hard_method_with_ties_is_greedy_hard_nms(data, iou_threshold) -> None:
    segments, scores = data
    scores = scores + np.float32(0.125)  # all kept unless suppressed
    out = soft_nms(segments, scores, method="hard", iou_threshold=iou_threshold,
                   min_score=0.0625)
    np.testing.assert_array_equal(out.scores, scores[out.indices])  # hard never decays
    ref = soft_nms_reference(segments, scores, method="hard", iou_threshold=iou_threshold,
                             sigma=1.0, min_score=0.0625)
    np.testing.assert_array_equal(out.indices, ref[0])
    kept = set(out.indices.tolist())
    for pos, i in enumerate(out.indices):  # no kept candidate suppresses a later one
        for j in out.indices[pos + 1:]:
            assert iou(segments[i], segments[j]) < np.float32(iou_threshold)
    for j in set(range(len(scores))) - kept:  # each dropped one by a better-or-equal kept
        assert any(scores[i] >= scores[j] and
                   iou(segments[i], segments[j]) >= np.float32(iou_threshold) for i in kept)


def iou(a: np.ndarray, b: np.ndarray) -> np.float32:
    eps = np.float32(1e-6)
    inter = max(np.float32(0), min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0] + eps) + (b[1] - b[0] + eps) - inter)


@settings(max_examples=800, **SETTINGS)
@given(data=st.one_of(candidates(max_n=20), candidates(max_n=20, grid=False)),
       voting_thresh=st.sampled_from([0.0, 0.3, 0.5, 0.75, 0.9, 1.0]),
       top_k=st.one_of(st.none(), st.integers(1, 5)), **PARAMS)
def test_voting_matches_reference(data, voting_thresh, top_k, **params) -> None:
    segments, scores = data
    plain = soft_nms(segments, scores, top_k=top_k, **params)
    voted = soft_nms(segments, scores, top_k=top_k, voting_thresh=voting_thresh, **params)
    np.testing.assert_array_equal(voted.indices, plain.indices)
    np.testing.assert_array_equal(voted.scores, plain.scores)
    want = vote_reference(plain.segments, segments, scores, voting_thresh)
    np.testing.assert_allclose(voted.segments, want, rtol=1e-6, atol=1e-6)
    offsets = [0, len(scores), len(scores)]
    batch = soft_nms_batch(segments, scores, offsets, top_k=top_k, voting_thresh=voting_thresh,
                           **params)
    np.testing.assert_array_equal(batch.query(0).segments, voted.segments)


# --- hand-computed vectors ------------------------------------------------------------------

TWO = np.array([[0, 10], [5, 15]], np.float32)  # IoU 5 / 15 = 1/3


@pytest.mark.parametrize(("method", "second"), [
    ("gaussian", 0.8 * math.exp(-(1 / 9) / 0.75)),  # exp(-IoU^2 / sigma)
    ("linear", 0.8 * (1 - 1 / 3)),  # IoU >= 0.3
    ("hard", None),  # IoU >= 0.3: score 0, dropped
])
def test_decay_of_two_overlapping_segments(method, second) -> None:
    out = soft_nms(TWO, [0.9, 0.8], method=method, sigma=0.75, iou_threshold=0.3)
    want = [0.9] if second is None else [0.9, second]
    np.testing.assert_array_equal(out.indices, np.arange(len(want)))
    np.testing.assert_allclose(out.scores, want, rtol=1e-6)


def test_linear_and_hard_leave_overlaps_below_threshold_alone() -> None:
    for method in ("linear", "hard"):
        out = soft_nms(TWO, [0.9, 0.8], method=method, iou_threshold=0.34)
        np.testing.assert_allclose(out.scores, [0.9, 0.8])


def test_ties_follow_the_extensions_working_order() -> None:
    disjoint = np.array([[0, 1], [2, 3], [4, 5]], np.float32)
    out = soft_nms(disjoint, [0.5, 0.5, 0.9])
    np.testing.assert_array_equal(out.indices, [2, 1, 0])  # 2 swapped with 0 in round one
    out = soft_nms(disjoint, [0.9, 0.5, 0.5])
    np.testing.assert_array_equal(out.indices, [0, 1, 2])


def test_dropped_candidates_are_replaced_by_the_last() -> None:
    # round one drops 1 (identical to 0); 3 takes its place and wins the 0.5 tie against 2
    segs = np.array([[0, 4], [0, 4], [10, 11], [20, 21]], np.float32)
    out = soft_nms(segs, [0.9, 0.8, 0.5, 0.5], method="hard", iou_threshold=0.5)
    np.testing.assert_array_equal(out.indices, [0, 3, 2])


def test_min_score_is_strict_and_spares_the_first_emission() -> None:
    segs = np.array([[0, 10], [0, 10], [20, 30]], np.float32)
    out = soft_nms(segs, [0.0005, 0.0002, 0.001], min_score=0.001)
    np.testing.assert_array_equal(out.indices, [2])  # 0.001 is not < 0.001; others drop
    out = soft_nms(segs[:1], [0.0005], min_score=0.001)
    np.testing.assert_array_equal(out.indices, [0])  # first emission is never checked


def test_zero_length_segments_never_overlap() -> None:
    segs = np.array([[3, 3], [3, 3], [0, 6]], np.float32)
    out = soft_nms(segs, [0.9, 0.8, 0.7], method="hard", iou_threshold=0.1)
    np.testing.assert_array_equal(out.indices, [0, 1, 2])


def test_voting_hand_vector() -> None:
    segs = np.array([[0, 10], [2, 12]], np.float32)  # IoU 8 / 12 = 2/3
    out = soft_nms(segs, [0.9, 0.6], voting_thresh=0.5)
    # [0, 10]: weights 0.9 * 1 and 0.6 * 2/3 = 0.4; [2, 12]: 0.6 * 1 and 0.9 * 2/3 = 0.6
    np.testing.assert_allclose(out.segments, [[0.8 / 1.3, 13.8 / 1.3], [1.0, 11.0]], rtol=1e-5)
    out = soft_nms(segs, [0.9, 0.6], voting_thresh=0.7)  # only itself votes
    np.testing.assert_allclose(out.segments, segs, rtol=1e-6)


def test_empty_inputs() -> None:
    out = soft_nms(np.empty((0, 2)), [])
    assert out.indices.shape == (0,) and out.segments.shape == (0, 2)
    assert len(soft_nms(TWO, [0.9, 0.8], top_k=0).indices) == 0
    batch = soft_nms_batch(np.empty((0, 2)), [], [0])
    assert len(batch) == 0 and batch.offsets.tolist() == [0]
    batch = soft_nms_batch(TWO, [0.9, 0.8], [0, 0, 2, 2], top_k=5)
    assert batch.offsets.tolist() == [0, 0, 2, 2]


def test_inputs_are_normalised_to_one_specialisation() -> None:
    expected = soft_nms(TWO, np.array([0.9, 0.8], np.float32))
    variants = [
        (TWO.astype(np.float64), [0.9, 0.8]),
        (np.asfortranarray(np.tile(TWO, (1, 1))), np.array([0.9, 0.8])),
        (TWO.tolist(), (0.9, 0.8)),
        (np.repeat(TWO, 2, axis=0)[::2], np.array([0.9, 0.0, 0.8, 0.0], np.float32)[::2]),
    ]
    readonly = TWO.copy()
    readonly.flags.writeable = False
    variants.append((readonly, np.array([0.9, 0.8], dtype=">f4")))
    for segs, scores in variants:
        got = soft_nms(segs, scores)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
    soft_nms_batch(np.asfortranarray(TWO), [0.9, 0.8], [0, 2], top_k=1)
    with pytest.raises(ValueError):  # names the culprit with a second kernel
        soft_nms(TWO.astype(np.float64), [0.9, np.nan])
    for kernel in (softnms_module._soft_nms_into, softnms_module._soft_nms_batch,
                   boundary_module._all_valid, boundary_module._first_invalid):
        assert len(kernel.signatures) == 1, kernel.signatures


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"segments": [[0, 1, 2]]}, r"shape \(N, 2\)"),
    ({"scores": [0.5, 0.5, 0.5]}, r"shape \(2,\)"),
    ({"scores": [0.5, np.nan]}, r"scores\[1\] = nan"),
    ({"scores": [0.5, -0.1]}, r">= 0"),
    ({"scores": [np.inf, 0.1]}, r"finite"),
    ({"segments": [[0, 1], [3, 2]]}, r"segments\[1\].*end must be >= start"),
    ({"segments": [[0, np.inf], [3, 4]]}, r"segments\[0\].*not finite"),
    ({"segments": [[-3e38, 3e38], [3, 4]]}, r"length finite"),
    ({"sigma": -1.0}, r"sigma must be > 0"),
    ({"sigma": 0.0}, r"sigma must be > 0"),
    ({"iou_threshold": 1.5}, r"iou_threshold must be >= 0.0 and <= 1.0"),
    ({"min_score": float("nan")}, r"min_score"),
    ({"method": "cubic"}, r"method must be one of hard, linear, gaussian"),
    ({"method": 3}, r"method must be one of"),
    ({"top_k": -1}, r"top_k must be a non-negative integer"),
    ({"top_k": 2.5}, r"top_k"),
    ({"top_k": True}, r"top_k"),
    ({"voting_thresh": 2.0}, r"voting_thresh"),
])
def test_invalid_inputs_raise_value_error(kwargs, match) -> None:
    args = {"segments": TWO, "scores": [0.9, 0.8], **kwargs}
    with pytest.raises(ValueError, match=match):
        soft_nms(**args)


@pytest.mark.parametrize("offsets", [[0, 1], [1, 2], [0, 2, 1, 2], [[0, 2]], [0.0, 2.0], []])
def test_invalid_batch_offsets(offsets) -> None:
    with pytest.raises(ValueError, match="offsets"):
        soft_nms_batch(TWO, [0.9, 0.8], offsets)


def test_method_parse() -> None:
    assert Method.parse("Gaussian") is Method.GAUSSIAN
    assert Method.parse(1) is Method.LINEAR
    assert Method.parse(Method.HARD) is Method.HARD
    with pytest.raises(ValueError):
        Method.parse(True)


def test_concurrent_batches_are_serialised() -> None:
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 100, 4000).astype(np.float32)
    segs = np.stack([starts, starts + 5], axis=1)
    scores = rng.random(4000).astype(np.float32)
    offsets = np.arange(0, 4001, 400)
    want = soft_nms_batch(segs, scores, offsets, top_k=5)
    results: list = []

    def run() -> None:
        results.append(soft_nms_batch(segs, scores, offsets, top_k=5))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for got in results:
        np.testing.assert_array_equal(got.indices, want.indices)


# --- compiled-code cache --------------------------------------------------------------------

CACHE_PROBE = textwrap.dedent("""
    import json
    from numba.core.registry import CPUDispatcher
    from gazenlq import kernels
    from gazenlq.kernels import _boundary, decode, softnms

    kernels.warm_up()
    stats = {}
    for module in (_boundary, decode, softnms):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher):
                s = obj.stats
                stats[name] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
    print(json.dumps(stats))
""")
ENTRY_KERNELS = ("_all_valid", "_soft_nms_into", "_soft_nms_batch", "_nms_into",
                 "_iou_matrix_into", "_decode_into", "_decode_rows_into")


@pytest.mark.slow
def test_second_process_loads_every_kernel_from_the_cache(tmp_path: Path) -> None:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def probe() -> dict[str, list[int]]:
        out = subprocess.run([sys.executable, "-c", CACHE_PROBE], env=env, check=True,
                             capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout)

    first = probe()
    for name in ENTRY_KERNELS:
        assert first[name] == [0, 1], (name, first[name])  # compiled once, then saved
    assert list(tmp_path.rglob("*.nbi")) and list(tmp_path.rglob("*.nbc"))
    second = probe()
    for name in ENTRY_KERNELS:
        assert second[name] == [1, 0], (name, second[name])  # loaded, never compiled
    assert all(misses == 0 for _, misses in second.values()), second


BLAS_PROBE = textwrap.dedent("""
    import json, sys
    import numba, numpy as np
    import gazenlq.kernels
    import numba.np.arraymath as arraymath
    skipped = "scipy.linalg" not in sys.modules
    @numba.njit
    def dot(a, b):
        return np.dot(a, b)
    print(json.dumps({"skipped": skipped, "have_blas": arraymath._HAVE_BLAS,
                      "dot": dot(np.eye(3), np.arange(3.0)).tolist(),
                      "blas_after": "scipy.linalg.cython_blas" in sys.modules}))
""")


def test_kernels_start_without_scipy_blas_and_blas_still_works_after() -> None:
    """Starting the kernels skips Numba's SciPy BLAS probe (0.15 s of a cold search), and
    leaves nothing behind: a later Numba function that needs BLAS imports it and runs."""
    pytest.importorskip("scipy.linalg", reason="SciPy is not installed: nothing to skip")
    out = subprocess.run([sys.executable, "-c", BLAS_PROBE], check=True, capture_output=True,
                         text=True, timeout=600)
    doc = json.loads(out.stdout)
    assert doc["skipped"] and doc["have_blas"] is False
    assert doc["dot"] == [0.0, 1.0, 2.0] and doc["blas_after"]
