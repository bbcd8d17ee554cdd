"""Gaze-map metrics: the gaze.md section 4 test vectors, properties, and GLC P / R / F1."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gazenlq.gaze.metrics import (
    GLC_THRESHOLDS,
    auc_judd,
    cc,
    choose_threshold,
    glc_scale,
    kl_div,
    nss,
    prf_at,
    sim,
)

S = np.arange(16, dtype=np.float64).reshape(4, 4)
F = np.zeros((4, 4))
F[3, 3] = F[0, 1] = F[2, 0] = 1
Q = np.zeros((4, 4))
Q[3, 2], Q[3, 3] = 1, 3


@pytest.mark.parametrize(("value", "expected"), [
    (lambda: kl_div(S, Q), 1.534355),
    (lambda: cc(S, Q), 0.524249),
    (lambda: nss(S, F), 0.105021),
    (lambda: sim(S, Q), 0.241667),
    (lambda: auc_judd(S, F), 9 / 13),
    (lambda: kl_div(np.ones((4, 4)), Q), 2.210254),
    (lambda: cc(S, S), 1.0),
    (lambda: sim(S, S), 1.0),
    (lambda: kl_div(S, S), 0.0),
], ids=["KL", "CC", "NSS", "SIM", "AUC-Judd", "KL-uniform", "CC-self", "SIM-self", "KL-self"])
def test_reference_vectors(value, expected):
    assert value() == pytest.approx(expected, abs=1e-6)
    assert isinstance(value(), float)


def test_auc_judd_is_exactly_nine_thirteenths():
    assert auc_judd(S, F) == pytest.approx(9 / 13, abs=1e-15)


def test_auc_judd_counts_tied_fixations_together():
    """A flat map is at chance: every fixation ties at the single threshold."""
    fix = np.zeros((5, 5))
    fix[0, 0] = fix[1, 1] = fix[4, 2] = 1
    assert auc_judd(np.zeros((5, 5)), fix) == pytest.approx(0.5)


def test_batches_give_one_value_per_map():
    s2 = np.stack([S, S[::-1]])
    q2 = np.stack([Q, Q.T])
    f2 = np.stack([F, F.T])
    for metric, ref in ((kl_div, q2), (cc, q2), (sim, q2), (nss, f2), (auc_judd, f2)):
        batched = metric(s2, ref)
        assert batched.shape == (2,)
        np.testing.assert_allclose(batched, [metric(s2[0], ref[0]), metric(s2[1], ref[1])])


def test_undefined_cases_give_nan_without_warnings():
    flat = np.ones((4, 4))
    assert math.isnan(cc(flat, Q))
    assert math.isnan(sim(flat, Q))
    assert math.isnan(nss(flat, F))
    assert math.isnan(nss(S, np.zeros((4, 4))))
    assert math.isnan(auc_judd(S, np.zeros((4, 4))))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"same shape, got \(4, 4\) and \(3, 4\)"):
        cc(S, S[:3])
    with pytest.raises(ValueError, match="maps"):
        kl_div(S.ravel(), S.ravel())


maps = arrays(np.float64, (5, 5), elements=st.integers(0, 40).map(float))


def varied(x: np.ndarray) -> bool:
    return np.ptp(x) > 0


@settings(max_examples=60, deadline=None)
@given(maps, maps, st.floats(0.1, 10), st.floats(-5, 5))
def test_correlation_properties(s, q, scale, shift):
    assume(varied(s) and varied(q))
    assert cc(s, q) == pytest.approx(cc(q, s), abs=1e-12)
    assert cc(s * scale + shift, q) == pytest.approx(cc(s, q), abs=1e-9)
    assert -1 - 1e-12 <= cc(s, q) <= 1 + 1e-12
    assert cc(s, s) == pytest.approx(1.0)
    assert nss(s * scale + shift, q > 20) == pytest.approx(nss(s, q > 20), abs=1e-9, nan_ok=True)


@settings(max_examples=60, deadline=None)
@given(maps, maps, st.floats(0.1, 10))
def test_distribution_properties(s, q, scale):
    assume(s.sum() > 0 and q.sum() > 0)
    assert abs(kl_div(s, s)) < 1e-9
    assert kl_div(s * scale, q / scale) == pytest.approx(kl_div(s, q), rel=1e-9, abs=1e-9)
    assume(varied(s) and varied(q))
    assert sim(s, s) == pytest.approx(1.0)
    assert sim(s, q) == pytest.approx(sim(q, s))
    assert sim(s * scale + 3, q) == pytest.approx(sim(s, q))
    assert 0 <= sim(s, q) <= 1 + 1e-12


@settings(max_examples=60, deadline=None)
@given(maps, arrays(bool, (5, 5)))
def test_auc_judd_properties(s, fix):
    assume(0 < fix.sum() < fix.size)
    auc = auc_judd(s, fix)
    assert 0 <= auc <= 1
    assert auc_judd(np.exp(s / 10) * 7 - 2, fix) == pytest.approx(auc)  # rank-based


def test_metrics_module_does_not_import_torch():
    code = "import sys, gazenlq.gaze.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- GLC precision / recall / F1 ---------------------------------------------------------------


def logits_for(q: np.ndarray, temperature: float = 2.0) -> np.ndarray:
    """Scores whose temperature softmax is q / sum(q)."""
    return temperature * np.log(q)


def test_glc_scale_is_softmax_then_min_max():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 8, 8)) * 4
    p = np.exp(x / 2) / np.exp(x / 2).sum(axis=(1, 2), keepdims=True)
    lo, hi = p.min(axis=(1, 2), keepdims=True), p.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(glc_scale(x), (p - lo) / (hi - lo + 1e-6), rtol=1e-12)
    np.testing.assert_allclose(glc_scale(x + 100.0), glc_scale(x), rtol=1e-9)
    assert glc_scale(np.full((4, 4), 1000.0)).max() == 0.0


def two_level_maps():
    """Scaled values ~[1, 0.015, 0.005, 0] per 2x2 map; ground truth on the first two cells."""
    preds = logits_for(np.array([[2.0, 1.015], [1.005, 1.0]]))[None]
    targets = np.array([[[0.5, 0.3], [0.001, 0.0]]])
    return preds, targets


def test_choose_threshold_picks_the_first_best_f1():
    preds, targets = two_level_maps()
    scaled = glc_scale(preds)[0]
    assert scaled[0, 1] == pytest.approx(0.015, abs=1e-5)
    assert scaled[1, 0] == pytest.approx(0.005, abs=1e-5)
    # 0.000 and 0.002, 0.004 also predict the 0.005 cell (precision 2/3); 0.006..0.014 are
    # perfect; 0.016 and up miss the 0.015 cell (recall 1/2).
    threshold = choose_threshold(preds, targets)
    assert threshold == GLC_THRESHOLDS[3] == pytest.approx(0.006)
    best = prf_at(threshold, preds, targets)
    assert (best.precision, best.recall, best.f1) == pytest.approx((1, 1, 1), abs=1e-5)
    low = prf_at(0.0, preds, targets)
    assert (low.precision, low.recall) == pytest.approx((2 / 3, 1), abs=1e-5)
    high = prf_at(0.016, preds, targets)
    assert (high.precision, high.recall) == pytest.approx((1, 0.5), abs=1e-5)
    assert high.f1 == pytest.approx(2 / 3, abs=1e-5)


def test_precision_and_recall_are_averaged_over_maps_before_f1():
    preds = np.array([[[0.0, -50.0], [-50.0, -50.0]],   # predicts cell 0 only
                      [[0.0, 0.0], [-50.0, -50.0]]])    # predicts cells 0 and 1
    targets = np.array([[[1.0, 1.0], [0.0, 0.0]],       # map 0: P 1, R 1/2
                        [[1.0, 0.0], [0.0, 0.0]]])      # map 1: P 1/2, R 1
    result = prf_at(0.5, preds, targets)
    assert (result.precision, result.recall) == pytest.approx((0.75, 0.75), abs=1e-5)
    assert result.f1 == pytest.approx(0.75, abs=1e-5)  # not the mean of per-map F1 (2/3)
    assert result.threshold == 0.5


def test_threshold_chosen_on_validation_applies_to_test():
    rng = np.random.default_rng(1)
    targets = np.zeros((6, 16, 16))
    for i, (y, x) in enumerate(rng.integers(3, 13, size=(6, 2))):
        targets[i, y - 2:y + 3, x - 2:x + 3] = 0.04
    preds = 2 * np.log(targets + 1e-4) + rng.normal(scale=0.5, size=targets.shape)
    threshold = choose_threshold(preds[:3], targets[:3])
    assert threshold in GLC_THRESHOLDS
    test = prf_at(threshold, preds[3:], targets[3:])
    assert test.f1 > 0.9
    assert 0 <= test.precision <= 1 and 0 <= test.recall <= 1
