"""IoU, hard NMS and Soft-NMS of 1-D segments; Soft-NMS single-query and batched, with
optional score-weighted voting.

IoU here is the post-processing one of the ActionFormer/GroundNLQ extension: segment length
``end - start + 1e-6`` and union ``len_a + len_b - intersection``, in float32. The ``1e-6``
keeps zero-length segments finite (their IoU with anything is 0). It is *not* the Ego4D
evaluator's IoU (union ``max(ends) - min(starts)``, NaN for an empty union), which lives with
the evaluation code.

Soft-NMS reproduces the ActionFormer/GroundNLQ C++ extension (grounding.md section 6) bit for
bit on Linux: the same float32 arithmetic, the same single-precision ``exp`` (the C library's
``expf``, which is what both the extension's ``std::exp(float)`` and Numba call) and the same
in-place swap scheme, hence the same tie-breaking. It needs no build step, and ``top_k``
stops after K emissions: O(K N) instead of the extension's O(N^2) full pass.

Design notes:
- One inner kernel, :func:`_soft_nms_into`, does one query; :func:`soft_nms` calls it
  directly and :func:`soft_nms_batch` calls it from a ``prange`` loop over queries. The batch
  kernel is the only parallel code in ``gazenlq.kernels`` and its calls are serialised by a
  lock: Numba's workqueue threading layer (used when neither OpenMP nor TBB is available)
  aborts when parallel kernels are entered from several threads at once. The single-query
  kernel is serial and releases the GIL, so callers may run it from their own threads.
- Every kernel that measures an overlap (IoU matrix, hard NMS, Soft-NMS, voting) lives in
  this file and calls the one :func:`_overlap`: Numba's on-disk cache is keyed on the
  caller's source file only, so an njit helper imported from another module could be edited
  without invalidating the cached code of its callers.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from gazenlq.bundle.postprocess import Method
from gazenlq.scalars import as_count, as_f32

from ._boundary import as_array, as_scores, as_segments, as_top_k, check_candidates

_EPS = np.float32(1e-6)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_NEG_INF = np.float32(-np.inf)
_HARD, _LINEAR, _GAUSSIAN = int(Method.HARD), int(Method.LINEAR), int(Method.GAUSSIAN)
_NO_VOTING = np.float32(-1.0)


class NMSResult(NamedTuple):
    """Kept candidates, best first."""

    indices: np.ndarray  # (K,) int64 positions in the input candidates
    scores: np.ndarray  # (K,) float32 scores when emitted (decayed by Soft-NMS)
    segments: np.ndarray  # (K, 2) float32 [start, end] (voted when voting is on)


@dataclass(frozen=True)
class BatchNMSResult:
    """Kept candidates of many queries, concatenated (CSR): query ``q`` owns rows
    ``offsets[q]:offsets[q + 1]``; its ``indices`` are positions within that query's own
    candidates (add the input offset for a position in the flat input)."""

    offsets: np.ndarray  # (Q + 1,) int64
    indices: np.ndarray  # (K,) int64
    scores: np.ndarray  # (K,) float32
    segments: np.ndarray  # (K, 2) float32

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def query(self, q: int) -> NMSResult:
        """The rows of query ``q``, as :func:`soft_nms` returns them for that query alone."""
        rows = slice(self.offsets[q], self.offsets[q + 1])
        return NMSResult(self.indices[rows], self.scores[rows], self.segments[rows])


class _Params(NamedTuple):
    method: int
    iou_threshold: np.float32
    sigma: np.float32
    min_score: np.float32
    voting_thresh: np.float32


def _params(method: Method | str, sigma: float, iou_threshold: float, min_score: float,
            voting_thresh: float | None) -> _Params:
    """Validated kernel scalars: an int method code and float32 thresholds."""
    return _Params(
        int(Method.parse(method)),
        as_f32(iou_threshold, "iou_threshold", low=0.0, high=1.0),
        as_f32(sigma, "sigma", low=0.0, low_open=True),
        as_f32(min_score, "min_score", low=0.0),
        _NO_VOTING if voting_thresh is None
        else as_f32(voting_thresh, "voting_thresh", low=0.0, high=1.0),
    )


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


def soft_nms(segments: np.ndarray, scores: np.ndarray, *,
             method: Method | str = Method.GAUSSIAN, sigma: float = 0.75,
             iou_threshold: float = 0.1, min_score: float = 0.001, top_k: int | None = None,
             voting_thresh: float | None = None) -> NMSResult:
    """Soft-NMS of one query's candidates, exactly as the ActionFormer/GroundNLQ extension.

    ``segments`` is ``(N, 2)`` ``[start, end]`` with ``end >= start``, ``scores`` ``(N,)``
    finite and ``>= 0``; both are converted to float32. Loop: emit the remaining candidate
    with the highest current score, then decay every remaining candidate by the IoU with it
    (segment length ``end - start + 1e-6``): ``hard`` sets the score to 0 when
    ``IoU >= iou_threshold``, ``linear`` multiplies it by ``1 - IoU`` when
    ``IoU >= iou_threshold``, ``gaussian`` always multiplies it by ``exp(-IoU^2 / sigma)``
    (``sigma``, not ``2 sigma^2``). A candidate whose decayed score is strictly below
    ``min_score`` is dropped. As in the extension, the check happens only after a decay, so
    the first emission is never dropped even if its score is below ``min_score``.

    Ties: the tied candidate earliest in the *working order* wins. The working order starts
    as the input order and changes as the extension's in-place scheme changes it: the
    emitted candidate swaps places with the first remaining candidate, and a dropped
    candidate's place is taken by the last remaining one. So the first round breaks ties by
    input position, later rounds not necessarily; e.g. the disjoint segments scored
    ``[0.5, 0.5, 0.9]`` are emitted in the order 2, 1, 0 (0 and 2 swapped in round one).

    ``top_k`` stops after K emissions: exactly the first K rows of the full pass (the loop
    is sequential, and with non-negative scores the emitted scores never increase), in
    O(K N). ``voting_thresh`` (off by default) then replaces each kept segment by the mean
    of the input segments whose IoU with it is ``>= voting_thresh``, weighted by input score
    x IoU (ActionFormer's variant, with the IoU above where theirs omits the ``1e-6``;
    unchanged when all weights are 0); scores are unchanged.

    Arithmetic is float32 with the C library's ``expf``, as in the extension, so results
    match it bit for bit on Linux. Returns the kept candidates best first: input positions
    (int64), scores when emitted (float32) and segments (float32).
    """
    segs = as_segments(segments)
    sc = as_scores(scores, len(segs))
    check_candidates(segs, sc, allow_negative=False)
    p = _params(method, sigma, iou_threshold, min_score, voting_thresh)
    n = len(sc)
    cap = as_top_k(top_k, n)
    out_indices = np.empty(cap, np.int64)
    out_scores = np.empty(cap, np.float32)
    out_segments = np.empty((cap, 2), np.float32)
    count = _soft_nms_into(segs, sc, 0, n, p.method, p.iou_threshold, p.sigma, p.min_score,
                           cap, p.voting_thresh, out_indices, out_scores, out_segments, 0)
    return NMSResult(out_indices[:count], out_scores[:count], out_segments[:count])


_BATCH_LOCK = threading.Lock()


def soft_nms_batch(segments: np.ndarray, scores: np.ndarray, offsets: np.ndarray, *,
                   method: Method | str = Method.GAUSSIAN, sigma: float = 0.75,
                   iou_threshold: float = 0.1, min_score: float = 0.001,
                   top_k: int | None = None,
                   voting_thresh: float | None = None) -> BatchNMSResult:
    """:func:`soft_nms` of many queries at once, in parallel across queries.

    The candidates of all queries are concatenated into ``segments`` ``(N, 2)`` and
    ``scores`` ``(N,)``; query ``q`` owns rows ``offsets[q]:offsets[q + 1]`` (``offsets`` is
    ``(Q + 1,)`` non-decreasing integers from 0 to N). Every query's rows of the result are
    identical to ``soft_nms`` on that query alone. Parallelism follows Numba's thread count
    (``NUMBA_NUM_THREADS`` / ``numba.set_num_threads``); concurrent calls are serialised.
    """
    segs = as_segments(segments)
    sc = as_scores(scores, len(segs))
    offs = _as_offsets(offsets, len(sc))
    check_candidates(segs, sc, allow_negative=False)
    p = _params(method, sigma, iou_threshold, min_score, voting_thresh)
    sizes = np.diff(offs)
    caps = sizes if top_k is None else np.minimum(sizes, as_count(top_k, "top_k"))
    cap_offsets = np.zeros(len(caps) + 1, np.int64)
    np.cumsum(caps, out=cap_offsets[1:])
    total = int(cap_offsets[-1])
    out_indices = np.empty(total, np.int64)
    out_scores = np.empty(total, np.float32)
    out_segments = np.empty((total, 2), np.float32)
    counts = np.empty(len(caps), np.int64)
    with _BATCH_LOCK:
        _soft_nms_batch(segs, sc, offs, cap_offsets, p.method, p.iou_threshold, p.sigma,
                        p.min_score, int(caps.max(initial=0)), p.voting_thresh, out_indices,
                        out_scores, out_segments, counts)
    offsets_out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets_out[1:])
    if not np.array_equal(counts, caps):  # some queries emitted fewer rows than reserved
        row_query = np.repeat(np.arange(len(caps)), caps)
        keep = np.arange(total) - cap_offsets[row_query] < counts[row_query]
        out_indices, out_scores, out_segments = (out_indices[keep], out_scores[keep],
                                                 out_segments[keep])
    return BatchNMSResult(offsets_out, out_indices, out_scores, out_segments)


def _as_offsets(offsets: object, n: int) -> np.ndarray:
    """``(Q + 1,)`` int64 CSR offsets from 0 to ``n``, non-decreasing."""
    offs = as_array(offsets, np.int64, "offsets")
    if offs.ndim != 1 or len(offs) < 1:
        raise ValueError(f"offsets must have shape (Q + 1,), got {offs.shape}")
    if offs[0] != 0 or offs[-1] != n or np.any(np.diff(offs) < 0):
        raise ValueError(f"offsets must be non-decreasing from 0 to {n} (the number of "
                         f"candidates), got {offs[0]} .. {offs[-1]}")
    return offs


@njit(cache=True, nogil=True)
def _overlap(ax1, ax2, alen, bx1, bx2, blen):
    """IoU of two segments given their lengths ``end - start + 1e-6`` (float32, 0 if apart)."""
    inter = min(ax2, bx2) - max(ax1, bx1)
    if inter <= _ZERO:
        return _ZERO
    return inter / (alen + blen - inter)


@njit(cache=True, nogil=True)
def _soft_nms_into(segments, scores, start, stop, method, iou_threshold, sigma, min_score,
                   top_k, voting_thresh, out_indices, out_scores, out_segments, out_start):
    """Soft-NMS of candidates ``start:stop``; writes up to ``top_k`` rows from ``out_start``
    (indices relative to ``start``) and returns how many it wrote.

    Working arrays hold the remaining candidates; positions ``< i`` are emitted ones. Each
    round fuses the decay of the remaining candidates with the search for the next maximum
    (strict ``>`` keeps the first position, as the extension's separate scan does).
    """
    n = stop - start
    cap = min(top_k, n)
    if cap <= 0:
        return 0
    x1 = np.empty(n, np.float32)
    x2 = np.empty(n, np.float32)
    length = np.empty(n, np.float32)
    score = np.empty(n, np.float32)
    index = np.empty(n, np.int64)
    best = 0
    best_score = scores[start]
    for j in range(n):
        a = segments[start + j, 0]
        b = segments[start + j, 1]
        x1[j] = a
        x2[j] = b
        length[j] = b - a + _EPS
        s = scores[start + j]
        score[j] = s
        index[j] = j
        if s > best_score:
            best_score = s
            best = j
    remaining = n
    count = 0
    i = 0
    while True:
        if best != i:  # the winner trades places with the first remaining candidate
            x1[i], x1[best] = x1[best], x1[i]
            x2[i], x2[best] = x2[best], x2[i]
            length[i], length[best] = length[best], length[i]
            score[i], score[best] = score[best], score[i]
            index[i], index[best] = index[best], index[i]
        bx1 = x1[i]
        bx2 = x2[i]
        blen = length[i]
        row = out_start + count
        out_indices[row] = index[i]
        out_scores[row] = score[i]
        out_segments[row, 0] = bx1
        out_segments[row, 1] = bx2
        count += 1
        if count == cap:
            break
        best = -1
        best_score = _NEG_INF
        pos = i + 1
        while pos < remaining:
            s = score[pos]
            ovr = _overlap(bx1, bx2, blen, x1[pos], x2[pos], length[pos])
            if method == _GAUSSIAN:
                if ovr > _ZERO:  # exp(-0 / sigma) is exactly 1: skip the call
                    s = s * math.exp(-(ovr * ovr) / sigma)
            elif ovr >= iou_threshold:
                s = s * (_ONE - ovr) if method == _LINEAR else s * _ZERO
            if s < min_score:  # drop: the last remaining candidate takes this place
                remaining -= 1
                x1[pos] = x1[remaining]
                x2[pos] = x2[remaining]
                length[pos] = length[remaining]
                score[pos] = score[remaining]
                index[pos] = index[remaining]
                continue
            score[pos] = s
            if s > best_score:
                best_score = s
                best = pos
            pos += 1
        if best < 0:
            break
        i += 1
    if voting_thresh >= _ZERO:
        _vote(segments, scores, start, stop, voting_thresh, out_segments, out_start,
              out_start + count)
    return count


@njit(cache=True, nogil=True)
def _vote(segments, scores, start, stop, thresh, out_segments, first, last):
    """Replace rows ``first:last`` of ``out_segments`` by the score x IoU weighted mean of the
    candidates ``start:stop`` whose IoU with them is ``>= thresh`` (kept when weights sum to 0)."""
    for row in range(first, last):
        kx1 = out_segments[row, 0]
        kx2 = out_segments[row, 1]
        klen = kx2 - kx1 + _EPS
        total = 0.0
        sum1 = 0.0
        sum2 = 0.0
        for j in range(start, stop):
            a = segments[j, 0]
            b = segments[j, 1]
            ovr = _overlap(kx1, kx2, klen, a, b, b - a + _EPS)
            if ovr >= thresh:
                w = np.float64(scores[j]) * np.float64(ovr)
                total += w
                sum1 += w * np.float64(a)
                sum2 += w * np.float64(b)
        if total > 0.0:
            out_segments[row, 0] = sum1 / total
            out_segments[row, 1] = sum2 / total


@njit(cache=True, nogil=True, parallel=True)
def _soft_nms_batch(segments, scores, offsets, out_offsets, method, iou_threshold, sigma,
                    min_score, top_k, voting_thresh, out_indices, out_scores, out_segments,
                    counts):
    """:func:`_soft_nms_into` for every query, queries spread over Numba's threads."""
    for q in prange(counts.shape[0]):
        counts[q] = _soft_nms_into(segments, scores, offsets[q], offsets[q + 1], method,
                                   iou_threshold, sigma, min_score, top_k, voting_thresh,
                                   out_indices, out_scores, out_segments, out_offsets[q])


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
            out[i, j] = _overlap(ax1, ax2, alen, b[j, 0], b[j, 1], blen[j])


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
            if not suppressed[j] and _overlap(ix1, ix2, length[i], segments[j, 0], segments[j, 1],
                                          length[j]) >= iou_threshold:
                suppressed[j] = True
    return count
