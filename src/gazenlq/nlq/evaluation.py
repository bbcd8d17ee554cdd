"""Recall@K at IoU thresholds and mIoU with the official Ego4D NLQ semantics, plus coverage.

Official semantics (EGO4D episodic-memory ``evaluate_ego4d_nlq.py``): a query is hit at
``(K, theta)`` when any of its first K predicted windows has IoU strictly greater than
theta; IoU = intersection / (max(ends) - min(starts)), and a zero union gives NaN, which is a
miss; the mean runs over the submitted entries (a missing query vanishes, a duplicate counts
twice); an unknown key is an error; fewer than K predictions are fine. mIoU is the mean IoU
of the top-1 window, where a NaN IoU counts as 0 (the official script would make the whole
mean NaN). Because the official mean hides missing and duplicate queries, the result also
lists them, as warnings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gazenlq.errors import AnnotationError, GazeNLQError
from gazenlq.nlq.annotations import Query, QueryKey, QueryTable
from gazenlq.nlq.submission import Entry

DEFAULT_KS = (1, 5)
DEFAULT_THRESHOLDS = (0.3, 0.5)


def iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of windows ``[..., 2]`` (broadcast); NaN where the union is 0 (or a window is NaN)."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    inter = np.maximum(0.0, np.minimum(pred[..., 1], gt[..., 1])
                       - np.maximum(pred[..., 0], gt[..., 0]))
    union = np.maximum(0.0, np.maximum(pred[..., 1], gt[..., 1])
                       - np.minimum(pred[..., 0], gt[..., 0]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


@dataclass(frozen=True)
class EvalResult:
    """Recall@K and mIoU in percent over the submitted entries, with coverage problems."""

    ks: tuple[int, ...]
    thresholds: tuple[float, ...]
    recall: dict[tuple[int, float], float]
    """``(K, theta) -> percent of entries hit``."""
    miou: float
    num_entries: int
    num_ground_truth: int
    missing: tuple[QueryKey, ...]
    """Ground-truth queries without a prediction (not in the denominator)."""
    duplicates: tuple[QueryKey, ...]
    """Queries predicted more than once (each such entry counts)."""

    @staticmethod
    def recall_name(k: int, theta: float) -> str:
        return f"R{k}@{theta:g}"

    def warnings(self) -> list[str]:
        """One line per coverage problem the official metric would hide."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} of {self.num_ground_truth} ground-truth queries "
                       f"have no prediction and are not counted (e.g. {_fmt_key(self.missing[0])})")
        if self.duplicates:
            out.append(f"{len(self.duplicates)} queries are predicted more than once and count "
                       f"each time (e.g. {_fmt_key(self.duplicates[0])})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "recall": {self.recall_name(k, t): v for (k, t), v in self.recall.items()},
            "miou": self.miou,
            "num_entries": self.num_entries,
            "num_ground_truth": self.num_ground_truth,
            "ks": list(self.ks),
            "thresholds": list(self.thresholds),
            "missing": [k._asdict() for k in self.missing],
            "duplicates": [k._asdict() for k in self.duplicates],
            "warnings": self.warnings(),
        }


def evaluate(entries: Sequence[Entry], ground_truth: QueryTable, *,
             ks: Sequence[int] = DEFAULT_KS, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
             source: str = "predictions") -> EvalResult:
    """Score ``entries`` against ``ground_truth``; ``source`` names the predictions in errors."""
    ks, thresholds = _check_settings(ks, thresholds)
    if not entries:
        raise AnnotationError(f"{source}: results: empty, nothing to evaluate")
    gt = ground_truth.by_key()
    kmax = max(ks)
    pred = np.full((len(entries), kmax, 2), np.nan)
    target = np.empty((len(entries), 2))
    for i, entry in enumerate(entries):
        query = _query_of(entry, i, gt, ground_truth.source, source)
        if query.answer is None:
            raise AnnotationError(f"{ground_truth.source}: query {_fmt_key(entry.key)} has no "
                                  f"answer window (unannotated file?)")
        windows = entry.predicted_times[:kmax]
        pred[i, :len(windows)] = windows
        target[i] = query.answer
    ious = iou(pred, target[:, None, :])
    recall = {(k, t): 100.0 * float(np.mean((ious[:, :k] > t).any(axis=1)))
              for k in ks for t in thresholds}
    counts = Counter(e.key for e in entries)
    return EvalResult(
        ks=ks, thresholds=thresholds, recall=recall,
        miou=100.0 * float(np.mean(np.nan_to_num(ious[:, 0], nan=0.0))),
        num_entries=len(entries), num_ground_truth=len(gt),
        missing=tuple(k for k in gt if k not in counts),
        duplicates=tuple(k for k, n in counts.items() if n > 1))


NO_TEMPLATE = "(no template)"


def evaluate_by_template(entries: Sequence[Entry], ground_truth: QueryTable, *,
                         ks: Sequence[int] = DEFAULT_KS,
                         thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                         source: str = "predictions") -> dict[str, EvalResult]:
    """``evaluate`` per query template (Ego4D NLQ's ``template`` field; queries without
    one under ``NO_TEMPLATE``), most frequent template first. Each template is scored
    against its own ground-truth queries, so coverage warnings stay per template."""
    gt = ground_truth.by_key()
    groups: dict[str, list[Entry]] = {}
    for i, entry in enumerate(entries):
        query = _query_of(entry, i, gt, ground_truth.source, source)
        groups.setdefault(query.template or NO_TEMPLATE, []).append(entry)
    out = {}
    for name, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        table = replace(ground_truth, queries=tuple(
            q for q in ground_truth if (q.template or NO_TEMPLATE) == name))
        out[name] = evaluate(group, table, ks=ks, thresholds=thresholds, source=source)
    return out


@dataclass(frozen=True)
class Example:
    """One query's top-1 answer beside its ground truth (clip seconds)."""

    query: str
    answer: tuple[float, float] | None
    truth: tuple[float, float]
    iou: float

    def hit(self, threshold: float) -> bool:
        return self.iou > threshold  # the official strict '>'; NaN is a miss


def examples(entries: Sequence[Entry], ground_truth: QueryTable, n: int, *,
             source: str = "predictions") -> list[Example]:
    """The first ``n`` entries' top-1 windows against their ground truth, as people read
    them (a demo, a sanity check); IoU as :func:`evaluate` computes it."""
    gt = ground_truth.by_key()
    out = []
    for i, entry in enumerate(entries[:n]):
        query = _query_of(entry, i, gt, ground_truth.source, source)
        if query.answer is None:
            continue
        top = tuple(entry.predicted_times[0]) if entry.predicted_times else None
        value = float(iou(np.array(top), np.array(query.answer))) if top else float("nan")
        out.append(Example(query.text or "", top, tuple(query.answer), value))
    return out


def _check_settings(ks: Sequence[int], thresholds: Sequence[float]
                    ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Validate K values and IoU thresholds; drop repeats, keep order."""
    if not ks or not thresholds:
        raise GazeNLQError("evaluation needs at least one K and one IoU threshold")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise GazeNLQError(f"K must be a positive integer, got {k!r}")
    for t in thresholds:
        if not 0.0 <= t <= 1.0:
            raise GazeNLQError(f"IoU threshold must be in [0, 1], got {t!r}")
    unique_ks = tuple(dict.fromkeys(int(k) for k in ks))
    return unique_ks, tuple(dict.fromkeys(float(t) for t in thresholds))


def _query_of(entry: Entry, i: int, gt: dict[QueryKey, Query], gt_source: str, source: str
              ) -> Query:
    """The ground-truth query of ``results[i]``; an unknown key is an error."""
    query = gt.get(entry.key)
    if query is None:
        raise AnnotationError(f"{source}: results[{i}]: unknown query {_fmt_key(entry.key)} "
                              f"(not in {gt_source})")
    return query


def _fmt_key(key: QueryKey) -> str:
    return (f"clip_uid={key.clip_uid} annotation_uid={key.annotation_uid} "
            f"query_idx={key.query_idx}")
