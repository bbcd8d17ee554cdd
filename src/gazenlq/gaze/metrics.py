"""Scores for predicted gaze maps: saliency metrics and GLC precision / recall / F1.

Saliency metrics follow gaze.md section 4 (the MIT saliency benchmark definitions): S is the
prediction, Q a continuous ground-truth density, F a binary fixation map. Every function
takes one map ``[H, W]`` (returns a float) or a batch ``[N, H, W]`` (returns ``[N]``). Maps
that make a metric undefined (a constant map for CC, SIM and NSS; no fixation for NSS and
AUC-Judd; every pixel fixated for AUC-Judd) give NaN.

GLC scores (gaze.md section 3): raw prediction scores go through a spatial softmax with
temperature 2 and min-max scaling, the ground-truth mask is ``target > 0.001``, and precision
and recall are averaged over maps before F1. GLC picks the best of 11 thresholds on the test
set itself; here :func:`choose_threshold` picks it on validation maps and :func:`prf_at`
applies it to test maps. Pass fixation frames only, as GLC does. NumPy only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)
"""2.22e-16, the epsilon of the reference KL-divergence."""
GLC_THRESHOLDS = np.linspace(0.0, 0.02, 11)
GLC_TEMPERATURE = 2.0
GLC_TARGET_MIN = 0.001
"""A ground-truth cell is gaze when its heatmap value exceeds this."""
_GLC_EPS = 1e-6

_AXES = (-2, -1)


def kl_div(s: np.ndarray, q: np.ndarray) -> float | np.ndarray:
    """KL(Q || P) = sum Q ln(eps + Q / (P + eps)), P = S / sum S, Q = Q / sum Q."""
    s, q = _pair(s, q)
    p, q = s / s.sum(axis=_AXES, keepdims=True), q / q.sum(axis=_AXES, keepdims=True)
    return _out((q * np.log(EPS + q / (p + EPS))).sum(axis=_AXES))


def cc(s: np.ndarray, q: np.ndarray) -> float | np.ndarray:
    """Pearson correlation coefficient between the two maps."""
    s, q = _pair(s, q)
    ds = s - s.mean(axis=_AXES, keepdims=True)
    dq = q - q.mean(axis=_AXES, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _out((ds * dq).sum(axis=_AXES)
                    / np.sqrt((ds**2).sum(axis=_AXES) * (dq**2).sum(axis=_AXES)))


def nss(s: np.ndarray, fixations: np.ndarray) -> float | np.ndarray:
    """Mean of the standardised S (std with ddof 1) over the fixation pixels (``F > 0``)."""
    s, fix = _pair(s, fixations)
    fix = fix > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (s - s.mean(axis=_AXES, keepdims=True)) / s.std(axis=_AXES, ddof=1, keepdims=True)
        return _out((z * fix).sum(axis=_AXES) / fix.sum(axis=_AXES))


def sim(s: np.ndarray, q: np.ndarray) -> float | np.ndarray:
    """Histogram intersection of the two maps, each min-max scaled then divided by its sum."""
    s, q = _pair(s, q)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_s, p_q = _distribution(_min_max(s)), _distribution(_min_max(q))
    return _out(np.minimum(p_s, p_q).sum(axis=_AXES))


def auc_judd(s: np.ndarray, fixations: np.ndarray) -> float | np.ndarray:
    """AUC-Judd: ROC over thresholds at the fixated values of S, trapezoid area.

    At the k-th highest fixated value t_k the TP rate is k / N_f and the FP rate
    (#{S >= t_k} - k) / (N - N_f), as in the reference. Tied fixated values (which the MIT
    code breaks with random jitter) are counted together, so the curve stays in [0, 1].
    """
    s, fix = _pair(s, fixations)
    flat_s = s.reshape(-1, s.shape[-2] * s.shape[-1])
    flat_f = fix.reshape(flat_s.shape) > 0
    return _out(np.array([_auc_judd_one(m, f) for m, f in zip(flat_s, flat_f, strict=True)])
                .reshape(s.shape[:-2]))


def _auc_judd_one(s: np.ndarray, fix: np.ndarray) -> float:
    n_fix, n = int(fix.sum()), s.size
    if n_fix == 0 or n_fix == n:
        return float("nan")
    fixated = np.sort(s[fix])
    thresholds = fixated[::-1]
    above = n - np.searchsorted(np.sort(s), thresholds, side="left")  # #{S >= t_k}
    k = n_fix - np.searchsorted(fixated, thresholds, side="left")  # k, or more on ties
    tp = np.concatenate([[0.0], k / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - k) / (n - n_fix), [1.0]])
    return float(np.sum(np.diff(fp) * (tp[1:] + tp[:-1]) / 2))


@dataclass(frozen=True)
class PRF:
    """GLC precision, recall and F1 at one threshold (fractions in [0, 1])."""

    threshold: float
    precision: float
    recall: float
    f1: float


def glc_scale(preds: np.ndarray, temperature: float = GLC_TEMPERATURE) -> np.ndarray:
    """Raw scores ``[..., H, W]`` -> spatial softmax at ``temperature`` -> min-max to [0, 1)."""
    x = np.asarray(preds, dtype=np.float64) / temperature
    x = np.exp(x - x.max(axis=_AXES, keepdims=True))
    p = x / x.sum(axis=_AXES, keepdims=True)
    lo, hi = p.min(axis=_AXES, keepdims=True), p.max(axis=_AXES, keepdims=True)
    return (p - lo) / (hi - lo + _GLC_EPS)


def prf_at(threshold: float, preds: np.ndarray, targets: np.ndarray, *,
           temperature: float = GLC_TEMPERATURE) -> PRF:
    """GLC precision / recall / F1 of raw scores ``preds`` vs heatmaps ``targets``."""
    scaled, mask = _glc_inputs(preds, targets, temperature)
    return _prf(threshold, scaled, mask)


def choose_threshold(val_preds: np.ndarray, val_targets: np.ndarray, *,
                     thresholds: np.ndarray = GLC_THRESHOLDS,
                     temperature: float = GLC_TEMPERATURE) -> float:
    """The threshold with the best GLC F1 on validation maps (the first one on ties)."""
    scaled, mask = _glc_inputs(val_preds, val_targets, temperature)
    f1 = [_prf(float(t), scaled, mask).f1 for t in thresholds]
    return float(thresholds[int(np.argmax(f1))])


def _glc_inputs(preds: np.ndarray, targets: np.ndarray, temperature: float
                ) -> tuple[np.ndarray, np.ndarray]:
    preds, targets = _pair(preds, targets)
    return glc_scale(preds, temperature), targets > GLC_TARGET_MIN


def _prf(threshold: float, scaled: np.ndarray, mask: np.ndarray) -> PRF:
    hit = scaled > threshold
    tp = (hit & mask).sum(axis=_AXES)
    recall = float(np.mean(tp / (mask.sum(axis=_AXES) + _GLC_EPS)))
    precision = float(np.mean(tp / (hit.sum(axis=_AXES) + _GLC_EPS)))
    f1 = 2 * recall * precision / (recall + precision + _GLC_EPS)
    return PRF(threshold, precision, recall, f1)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"expected two maps [H, W] or batches [N, H, W] of the same shape, "
                         f"got {a.shape} and {b.shape}")
    return a, b


def _min_max(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=_AXES, keepdims=True), x.max(axis=_AXES, keepdims=True)
    return (x - lo) / (hi - lo)


def _distribution(x: np.ndarray) -> np.ndarray:
    return x / x.sum(axis=_AXES, keepdims=True)


def _out(values: np.ndarray) -> float | np.ndarray:
    """A 0-d result becomes a plain float."""
    return float(values) if np.ndim(values) == 0 else values
