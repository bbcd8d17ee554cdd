"""Pairwise IoU and hard NMS of 1-D segments.

IoU here is the post-processing one of the ActionFormer/GroundNLQ extension: segment length
``end - start + 1e-6`` and union ``len_a + len_b - intersection``, in float32. The ``1e-6``
keeps zero-length segments finite (their IoU with anything is 0). It is *not* the Ego4D
evaluator's IoU (union ``max(ends) - min(starts)``, NaN for an empty union), which lives with
the evaluation code.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._boundary import as_f32, as_scores, as_segments, as_top_k, check_candidates
from .softnms import NMSResult

_EPS = np.float32(1e-6)
_ZERO = np.float32(0.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` float32 IoU between two sets of ``[start, end]`` segments."""
    sa = as_segments(a, "a")
    sb = as_segments(b, "b")
    for name, segs in (("a", sa), ("b", sb)):
        check_candidates(segs, np.zeros(len(segs), np.float32), allow_negative=False, name=name)
    out = np.empty((len(sa), len(sb)), np.float32)
    _iou_matrix_into(sa, sb, out)
    return out


def nms(segments: np.ndarray, scores: np.ndarray, iou_threshold: float, *,
        top_k: int | None = None) -> NMSResult:
    """Hard NMS: visit candidates by decreasing score (ties: lowest input index first), keep
    one unless a kept one has ``IoU >= iou_threshold`` with it; stop after ``top_k`` kept.

    ``scores`` may be any finite values (only their order matters); the returned scores and
    segments are the kept candidates' own. Cost O(N log N + K N) for K kept.
    """
    segs = as_segments(segments)
    sc = as_scores(scores, len(segs))
    check_candidates(segs, sc, allow_negative=True)
    thr = as_f32(iou_threshold, "iou_threshold", low=0.0, high=1.0)
    out = np.empty(as_top_k(top_k, len(sc)), np.int64)
    keep = out[:_nms_into(segs, sc, thr, len(out), out)]
    return NMSResult(keep, sc[keep], segs[keep])


@njit(cache=True, nogil=True)
def _iou(ax1, ax2, alen, bx1, bx2, blen):
    """IoU of two segments given their lengths ``end - start + 1e-6`` (float32, 0 if apart)."""
    inter = min(ax2, bx2) - max(ax1, bx1)
    if inter <= _ZERO:
        return _ZERO
    return inter / (alen + blen - inter)


@njit(cache=True, nogil=True)
def _iou_matrix_into(a, b, out):
    blen = np.empty(b.shape[0], np.float32)
    for j in range(b.shape[0]):
        blen[j] = b[j, 1] - b[j, 0] + _EPS
    for i in range(a.shape[0]):
        ax1 = a[i, 0]
        ax2 = a[i, 1]
        alen = ax2 - ax1 + _EPS
        for j in range(b.shape[0]):
            out[i, j] = _iou(ax1, ax2, alen, b[j, 0], b[j, 1], blen[j])


@njit(cache=True, nogil=True)
def _nms_into(segments, scores, iou_threshold, top_k, out):
    """Write the kept input positions to ``out`` (at most ``top_k``); return their count."""
    n = scores.shape[0]
    if min(top_k, n) <= 0:
        return 0
    order = np.argsort(-scores, kind="mergesort")  # stable: ties keep input order
    length = np.empty(n, np.float32)
    for j in range(n):
        length[j] = segments[j, 1] - segments[j, 0] + _EPS
    suppressed = np.zeros(n, np.bool_)
    count = 0
    for r in range(n):
        i = order[r]
        if suppressed[i]:
            continue
        out[count] = i
        count += 1
        if count == top_k:
            break
        ix1 = segments[i, 0]
        ix2 = segments[i, 1]
        for r2 in range(r + 1, n):
            j = order[r2]
            if not suppressed[j] and _iou(ix1, ix2, length[i], segments[j, 0], segments[j, 1],
                                          length[j]) >= iou_threshold:
                suppressed[j] = True
    return count
