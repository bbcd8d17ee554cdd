"""Coarse-to-fine search, the coarse half: a library's span embeddings in one matrix, exact
inner-product scoring with BLAS, and the candidate regions the fine model then grounds in.

Every cached window of every store contributes its spans (``coarse_emb``, ``[spans, dim]``
per window, from the per-video graph). A query's top-M spans become regions of their
windows: the span with ``context`` steps either side, merged where regions of one window
overlap, aligned and padded to the bundle's length multiple. A region that covers its whole
window is that window exactly, so with M covering every span the fine stage runs on exactly
the exhaustive search's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StoreSpans:
    """One store's coarse spans: ``emb [windows, spans, dim]`` and, per window, its start
    (relative to the scanned range) and valid steps."""

    path: Path
    emb: np.ndarray
    starts: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class Region:
    """Steps ``[start, stop)`` of window ``window`` of store ``store`` (an index into the
    library's stores), in window-local steps."""

    store: int
    window: int
    start: int
    stop: int


class SpanIndex:
    """The spans of a library, one row each, scored exactly by a matrix product - or, from
    ``ann_min_spans`` spans on, searched with an approximate index (engine/ann.py, built on
    first use and kept with this index: the engine memoises one per library)."""

    def __init__(self, stores: list[StoreSpans], span: int, *,
                 ann_min_spans: int | None = None) -> None:
        self.stores, self.span, self.ann_min_spans = stores, span, ann_min_spans
        self._ann = None
        rows, owner, window, index = [], [], [], []
        for s, st in enumerate(stores):
            n = st.emb.shape[1]
            # spans wholly past a window's valid steps are padding: never candidates
            keep = (np.arange(n)[None, :] * span < st.valid[:, None])
            wi, si = np.nonzero(keep)
            rows.append(st.emb[wi, si])
            owner.append(np.full(len(wi), s, np.int32))
            window.append(wi.astype(np.int32))
            index.append(si.astype(np.int32))
        dim = stores[0].emb.shape[-1] if stores else 0
        self.emb = (np.concatenate(rows) if rows else np.zeros((0, dim))).astype(np.float32)
        self.store = np.concatenate(owner) if owner else np.zeros(0, np.int32)
        self.window = np.concatenate(window) if window else np.zeros(0, np.int32)
        self.index = np.concatenate(index) if index else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.emb)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``[Q, N]`` inner products of the queries' embeddings with every span."""
        return np.asarray(queries, np.float32) @ self.emb.T

    def top(self, scores: np.ndarray, m: int) -> np.ndarray:
        """``[Q, min(m, N)]`` rows of the best spans per query, best first."""
        m = min(m, scores.shape[1])
        if m == scores.shape[1]:
            return np.argsort(-scores, axis=1, kind="stable")
        part = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        return np.take_along_axis(part, order, 1)

    def uses_ann(self) -> bool:
        """Whether :meth:`nearest` searches approximately: ``ann_min_spans`` None means from
        ``ANN_MIN_SPANS`` spans when the ``ann`` extra is installed, 0 never, N > 0 from N
        spans (and the extra is required: MissingDependencyError names it)."""
        from gazenlq.engine import ann

        if self.ann_min_spans is None:
            return len(self) >= ann.ANN_MIN_SPANS and ann.available()
        return 0 < self.ann_min_spans <= len(self)

    def nearest(self, queries: np.ndarray, m: int) -> np.ndarray:
        """``[Q, min(m, N)]`` rows of each query's best spans, best first: exact (``top``
        of ``scores``) or, where :meth:`uses_ann`, from the approximate index; a query the
        index cannot fill is answered exactly."""
        if not self.uses_ann():
            return self.top(self.scores(queries), m)
        if self._ann is None:
            from gazenlq.engine.ann import SpanANN

            self._ann = SpanANN(self.emb)
        rows = self._ann.top(queries, m)
        short = np.nonzero((rows < 0).any(axis=1))[0]
        if len(short):
            rows[short] = self.top(self.scores(np.asarray(queries)[short]), m)
        return rows

    def regions(self, rows: np.ndarray, *, context: int, multiple: int) -> list[Region]:
        """The regions of the spans ``rows``: each span +- ``context`` steps, start aligned
        down and length padded up to ``multiple``, clipped to its window's valid steps and
        merged where they overlap within a window (a region covering the whole window is
        the window)."""
        by_window: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for r in rows:
            s, w = int(self.store[r]), int(self.window[r])
            valid = int(self.stores[s].valid[w])
            a = max(0, int(self.index[r]) * self.span - context)
            a -= a % multiple
            b = min(valid, (int(self.index[r]) + 1) * self.span + context)
            by_window.setdefault((s, w), []).append((a, b))
        out = []
        for (s, w), spans in sorted(by_window.items()):
            spans.sort()
            merged = [list(spans[0])]
            for a, b in spans[1:]:
                if a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            out += [Region(s, w, a, b) for a, b in merged]
        return out
