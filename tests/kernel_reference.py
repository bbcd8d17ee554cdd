"""Plain-NumPy references for ``gazenlq.kernels``, written from grounding.md section 6.

Independent of the kernels (never imports them): the tests check the kernels against these,
and ``benchmarks/bench_kernels.py`` times them as the NumPy baseline. Arithmetic is float32
throughout, like the C++ extension; the Gaussian weight uses the C library's single-precision
``expf`` (what the extension's ``std::exp(float)`` calls), because NumPy's own float32 ``exp``
differs from it in the last bit for a large share of inputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

EPS = np.float32(1e-6)
METHODS = ("hard", "linear", "gaussian")

_libm = ctypes.CDLL(ctypes.util.find_library("m"))
_libm.expf.restype = ctypes.c_float
_libm.expf.argtypes = [ctypes.c_float]


def expf(x: np.ndarray) -> np.ndarray:
    """Elementwise C ``expf`` of a float32 array."""
    return np.array([_libm.expf(v) for v in x.tolist()], dtype=np.float32)


def iou_one_to_many(seg: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """Float32 IoU of one segment with many, lengths ``end - start + 1e-6``."""
    inter = np.minimum(seg[1], segs[:, 1]) - np.maximum(seg[0], segs[:, 0])
    inter = np.maximum(np.float32(0), inter)
    len_a = seg[1] - seg[0] + EPS
    len_b = segs[:, 1] - segs[:, 0] + EPS
    return inter / (len_a + len_b - inter)


def soft_nms_reference(segments: np.ndarray, scores: np.ndarray, *, method: str,
                       iou_threshold: float, sigma: float, min_score: float,
                       top_k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept indices (int64), their scores when emitted (float32) and segments (float32).

    Each round emits the first candidate of the working order with the highest current
    score, then decays all the others. The working order (original indices of the remaining
    candidates) follows the extension: the winner trades places with the head, the head
    leaves, and dropped candidates are removed by moving the last remaining candidate into
    their place (a candidate moved that way may itself be dropped, and so on).
    """
    segs = np.asarray(segments, np.float32).reshape(-1, 2)
    current = np.array(scores, np.float32)
    thr, sig, floor = np.float32(iou_threshold), np.float32(sigma), np.float32(min_score)
    limit = len(current) if top_k is None else top_k
    order = np.arange(len(current))
    kept: list[int] = []
    kept_scores: list[np.float32] = []
    while order.size and len(kept) < limit:
        p = int(np.argmax(current[order]))  # first position holding the maximum
        best = order[p]
        kept.append(int(best))
        kept_scores.append(current[best])
        order[p] = order[0]
        rest = order[1:]
        ovr = iou_one_to_many(segs[best], segs[rest])
        weight = np.ones_like(ovr)
        if method == "gaussian":  # exp(-0 / sigma) = 1: only overlapping ones need expf
            hit = ovr > 0
            weight[hit] = expf(-(ovr[hit] * ovr[hit]) / sig)
        elif method == "linear":
            weight = np.where(ovr >= thr, np.float32(1) - ovr, weight)
        elif method == "hard":
            weight = np.where(ovr >= thr, np.float32(0), weight)
        else:
            raise ValueError(method)
        current[rest] = current[rest] * weight
        dropped = current[rest] < floor
        # Swap-with-last removal, vectorised: the kept candidates among the first `k`
        # positions stay; the holes there are filled, in increasing position, by the kept
        # candidates after position `k` taken from the end.
        k = int(np.count_nonzero(~dropped))
        holes = np.flatnonzero(dropped[:k])
        fillers = (np.flatnonzero(~dropped[k:]) + k)[::-1]
        rest[holes] = rest[fillers]
        order = rest[:k]
    idx = np.array(kept, np.int64)
    return idx, np.array(kept_scores, np.float32), segs[idx]


def vote_reference(kept: np.ndarray, segments: np.ndarray, scores: np.ndarray,
                   thresh: float) -> np.ndarray:
    """Each kept segment -> score x IoU weighted mean of the segments with IoU >= thresh."""
    segs = np.asarray(segments, np.float32)
    out = np.array(kept, np.float32).reshape(-1, 2)
    for r, seg in enumerate(out.copy()):
        ovr = iou_one_to_many(seg, segs)
        w = np.where(ovr >= np.float32(thresh), scores.astype(np.float64) * ovr, 0.0)
        if w.sum() > 0:
            out[r] = (w[:, None] * segs.astype(np.float64)).sum(axis=0) / w.sum()
    return out


def decode_reference(logits: np.ndarray, distances: np.ndarray, level_sizes: list[int],
                     strides: list[float], *, score_threshold: float, pre_nms_topk: int,
                     min_length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Section 5 step 1, level by level: segments, probabilities and source positions."""
    segs, probs, sources = [], [], []
    start = 0
    for size, stride in zip(level_sizes, strides):
        stop = start + size
        prob = (1.0 / (1.0 + np.exp(-np.asarray(logits[start:stop], np.float64)))).astype(
            np.float32)
        cand = np.flatnonzero(prob > np.float32(score_threshold))
        cand = cand[np.argsort(-prob[cand], kind="stable")][:pre_nms_topk]
        t = np.arange(size, dtype=np.float32)[cand] * np.float32(stride)
        d = np.asarray(distances[start:stop], np.float32)[cand] * np.float32(stride)
        seg = np.stack([t - d[:, 0], t + d[:, 1]], axis=1)
        ok = seg[:, 1] - seg[:, 0] > np.float32(min_length)
        segs.append(seg[ok])
        probs.append(prob[cand][ok])
        sources.append(cand[ok] + start)
        start = stop
    return (np.concatenate(segs).reshape(-1, 2), np.concatenate(probs),
            np.concatenate(sources).astype(np.int64))
