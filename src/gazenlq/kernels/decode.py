"""Per-level point predictions -> candidate segments, and the full post-processing of a query.

Implements grounding.md section 5, steps 1-2, in feature-step coordinates. Step 3 (seconds,
clamped to the clip) belongs to the caller: ``gazenlq.timegrid.TimeGrid.segments_to_seconds``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numba import njit

from gazenlq.bundle.postprocess import PostprocessConfig
from gazenlq.scalars import as_count, as_f32

from ._boundary import as_array
from .softnms import NMSResult, soft_nms


class Candidates(NamedTuple):
    """Decoded candidates, level by level (finest first), each level by decreasing score."""

    segments: np.ndarray  # (M, 2) float32 [start, end] in feature steps
    scores: np.ndarray  # (M,) float32 probabilities
    sources: np.ndarray  # (M,) int64 positions in the flat (all-level) predictions


def decode_segments(logits: np.ndarray, distances: np.ndarray, level_sizes: Sequence[int],
                    strides: Sequence[float], *, points: np.ndarray | None = None,
                    score_threshold: float = 0.001, pre_nms_topk: int = 2000,
                    min_length: float = 0.001) -> Candidates:
    """Decode one query's per-level predictions into candidate segments (in steps).

    Predictions of all levels are concatenated, finest first: ``logits`` ``(M,)`` are the
    classification head's logits (not probabilities: the sigmoid is taken here, in double
    precision rounded to float32; ``-inf`` marks a masked point), ``distances`` ``(M, 2)``
    the regression head's distances to start and end in units of the level's stride.
    ``level_sizes`` gives the number of points of each level (pass only valid points, or
    ``-inf`` logits for padded ones) and ``strides`` their stride in steps; point ``i`` of a
    level sits at ``i * stride`` steps unless ``points`` ``(M,)`` says otherwise.

    Per level: keep probability ``> score_threshold``, then the ``pre_nms_topk`` most
    probable (ties: earlier point first) by decreasing probability, decode
    ``[t - d0 * s, t + d1 * s]`` and drop segments of length ``<= min_length`` (the anchors'
    strict ``>``; the length filter runs after the top-k, as theirs does).
    """
    lg = as_array(logits, np.float32, "logits")
    if lg.ndim != 1:
        raise ValueError(f"logits must have shape (M,), got {lg.shape}")
    m = len(lg)
    dist = as_array(distances, np.float32, "distances")
    if dist.shape != (m, 2):
        raise ValueError(f"distances must have shape ({m}, 2) to match logits, got {dist.shape}")
    grid = _Grid.of(level_sizes, strides, m, points)
    if np.isnan(lg).any():
        raise ValueError(f"logits[{int(np.flatnonzero(np.isnan(lg))[0])}] is nan")
    if not np.isfinite(dist).all():
        bad = int(np.flatnonzero(~np.isfinite(dist).all(axis=1))[0])
        raise ValueError(f"distances[{bad}] = {dist[bad].tolist()} is not finite")
    topk = as_count(pre_nms_topk, "pre_nms_topk")
    cap = int(np.minimum(grid.sizes, topk).sum())
    out_segments = np.empty((cap, 2), np.float32)
    out_scores = np.empty(cap, np.float32)
    out_sources = np.empty(cap, np.int64)
    count = _decode_into(lg, dist, grid.points, grid.offsets, grid.strides,
                         as_f32(score_threshold, "score_threshold", low=0.0, high=1.0), topk,
                         as_f32(min_length, "min_length", low=0.0),
                         out_segments, out_scores, out_sources)
    return Candidates(out_segments[:count], out_scores[:count], out_sources[:count])


def decode_rows(logits: np.ndarray, distances: np.ndarray, level_sizes: Sequence[int],
                strides: Sequence[float], *, score_threshold: float = 0.001,
                pre_nms_topk: int = 2000, min_length: float = 0.001) -> list[Candidates]:
    """:func:`decode_segments` of every row of ``logits`` ``(B, M)`` and ``distances``
    ``(B, M, 2)``, rows on one grid of points, in one kernel call: a file of questions
    decodes thousands of short rows, where checking and dispatching each row on its own
    cost more than decoding it (the results are :func:`decode_segments`' row by row)."""
    lg = as_array(logits, np.float32, "logits")
    if lg.ndim != 2:
        raise ValueError(f"logits must have shape (B, M), got {lg.shape}")
    dist = as_array(distances, np.float32, "distances")
    if dist.shape != (*lg.shape, 2):
        raise ValueError(f"distances must have shape {(*lg.shape, 2)} to match logits, got "
                         f"{dist.shape}")
    grid = _Grid.of(level_sizes, strides, lg.shape[1], None)
    if np.isnan(lg).any():
        raise ValueError(f"logits{tuple(int(i) for i in np.argwhere(np.isnan(lg))[0])} is nan")
    if not np.isfinite(dist).all():
        raise ValueError("distances must be finite, got "
                         f"{dist[tuple(np.argwhere(~np.isfinite(dist))[0][:2])].tolist()}")
    topk = as_count(pre_nms_topk, "pre_nms_topk")
    cap = int(np.minimum(grid.sizes, topk).sum())
    rows = len(lg)
    out_segments = np.empty((rows, cap, 2), np.float32)
    out_scores = np.empty((rows, cap), np.float32)
    out_sources = np.empty((rows, cap), np.int64)
    counts = np.empty(rows, np.int64)
    _decode_rows_into(lg, dist, grid.points, grid.offsets, grid.strides,
                      as_f32(score_threshold, "score_threshold", low=0.0, high=1.0), topk,
                      as_f32(min_length, "min_length", low=0.0),
                      out_segments, out_scores, out_sources, counts)
    return [Candidates(out_segments[r, :c], out_scores[r, :c], out_sources[r, :c])
            for r, c in enumerate(counts.tolist())]


class _Grid(NamedTuple):
    """The checked levels of a prediction grid: points per level, their strides, each
    point's position in steps and each level's first point (``offsets``, one more entry)."""

    sizes: np.ndarray
    strides: np.ndarray
    points: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, level_sizes: Sequence[int], strides: Sequence[float], m: int,
           points: np.ndarray | None) -> _Grid:
        sizes = np.array([as_count(s, "level_sizes[]") for s in level_sizes], np.int64)
        st = as_array(strides, np.float32, "strides")
        if st.shape != sizes.shape:
            raise ValueError(f"strides must have one entry per level ({len(sizes)} "
                             f"level_sizes), got shape {st.shape}")
        if sizes.sum() != m:
            raise ValueError(f"level_sizes sum to {sizes.sum()} but there are {m} logits")
        if not np.all(np.isfinite(st) & (st > 0)):
            raise ValueError(f"strides must be finite and > 0, got {st.tolist()}")
        if points is None:
            pts = np.concatenate([np.arange(n, dtype=np.float32) * s
                                  for n, s in zip(sizes, st)] or [np.empty(0, np.float32)])
        else:
            pts = as_array(points, np.float32, "points")
            if pts.shape != (m,):
                raise ValueError(f"points must have shape ({m},) to match logits, got "
                                 f"{pts.shape}")
            if not np.isfinite(pts).all():
                raise ValueError("points must be finite")
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(sizes, st, pts, offsets)


def postprocess_query(logits: np.ndarray, distances: np.ndarray, level_sizes: Sequence[int],
                      strides: Sequence[float], *, points: np.ndarray | None = None,
                      config: PostprocessConfig | None = None) -> NMSResult:
    """Section-5 post-processing of one query: :func:`decode_segments` then :func:`soft_nms`.

    Returns the kept segments in feature steps, best first, with their Soft-NMS scores and,
    as ``indices``, the positions of the points that predicted them in the flat predictions.
    Convert to seconds with ``TimeGrid.segments_to_seconds(result.segments, duration_s)``.
    """
    cfg = config or PostprocessConfig()
    cand = decode_segments(logits, distances, level_sizes, strides, points=points,
                           score_threshold=cfg.score_threshold,
                           pre_nms_topk=cfg.pre_nms_topk, min_length=cfg.min_length)
    kept = soft_nms(cand.segments, cand.scores, method=cfg.method, sigma=cfg.sigma,
                    iou_threshold=cfg.iou_threshold, min_score=cfg.min_score, top_k=cfg.top_k,
                    voting_thresh=cfg.voting_thresh)
    return NMSResult(cand.sources[kept.indices], kept.scores, kept.segments)


@njit(cache=True, nogil=True)
def _decode_rows_into(logits, distances, points, level_offsets, strides, score_threshold,
                      pre_nms_topk, min_length, out_segments, out_scores, out_sources,
                      counts):
    """:func:`_decode_into` of every row; each row's count into ``counts``."""
    for r in range(logits.shape[0]):
        counts[r] = _decode_into(logits[r], distances[r], points, level_offsets, strides,
                                 score_threshold, pre_nms_topk, min_length, out_segments[r],
                                 out_scores[r], out_sources[r])


@njit(cache=True, nogil=True)
def _decode_into(logits, distances, points, level_offsets, strides, score_threshold,
                 pre_nms_topk, min_length, out_segments, out_scores, out_sources):
    """Decode every level into the output arrays; return the number of candidates written."""
    count = 0
    for level in range(strides.shape[0]):
        lo = level_offsets[level]
        n = level_offsets[level + 1] - lo
        prob = np.empty(n, np.float32)
        kept = np.empty(n, np.int64)
        m = 0
        for j in range(n):
            p = np.float32(1.0 / (1.0 + math.exp(-np.float64(logits[lo + j]))))
            prob[j] = p
            if p > score_threshold:
                kept[m] = j
                m += 1
        keys = np.empty(m, np.float32)
        for r in range(m):
            keys[r] = -prob[kept[r]]
        order = np.argsort(keys, kind="mergesort")  # stable: ties keep point order
        stride = strides[level]
        for r in range(min(m, pre_nms_topk)):
            j = kept[order[r]]
            t = points[lo + j]
            left = t - distances[lo + j, 0] * stride
            right = t + distances[lo + j, 1] * stride
            if right - left > min_length:
                out_segments[count, 0] = left
                out_segments[count, 1] = right
                out_scores[count] = prob[j]
                out_sources[count] = lo + j
                count += 1
    return count
