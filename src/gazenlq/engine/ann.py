"""Approximate top-M spans of a large library, with faiss (the ``ann`` extra).

Exact inner products (``SpanIndex.scores`` + ``top``) cost one matrix product over every
span per query; past ``ANN_MIN_SPANS`` spans an inverted-file index (faiss ``IndexIVFFlat``,
inner product) is faster and, at the probe count below, finds nearly all of the exact top 8
on our span embeddings (benchmarks/bench_ann.py, docs/coarse-to-fine.md "Exact or ANN"). faiss is
imported only here and only when an index is built, so without the extra nothing imports it.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np

from gazenlq.errors import MissingDependencyError

ANN_MIN_SPANS = 5_000
"""Library size (spans) from which ``SearchOptions.ann_min_spans=None`` uses the ANN index:
the crossover measured by benchmarks/bench_ann.py - the smallest size at which ANN was
faster at 1 and at 64 queries per call in every run (docs/coarse-to-fine.md)."""
PROBES = 64
"""Inverted lists searched per query (faiss ``nprobe``): recall@8 >= 0.99 on the benched
libraries (16 probes gave 0.92-0.96)."""
INSTALL = "pip install 'gazenlq[ann]'"


def available() -> bool:
    """Whether the ``ann`` extra (faiss-cpu) is installed, without importing it."""
    return importlib.util.find_spec("faiss") is not None


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(f"approximate span search (ann_min_spans) needs faiss: "
                                     f"{INSTALL}") from exc
    return faiss


class SpanANN:
    """An inverted-file inner-product index over the rows ``emb`` ([N, dim], fp32, unit
    norm): about ``2 sqrt(N)`` lists from k-means on a sample of the rows, every row in
    its nearest list, ``PROBES`` lists searched per query."""

    def __init__(self, emb: np.ndarray, *, probes: int = PROBES, seed: int = 0) -> None:
        faiss = _faiss()
        emb = np.ascontiguousarray(emb, np.float32)
        n, dim = emb.shape
        lists = max(1, min(int(2 * math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.seed = 10, seed
        rng = np.random.default_rng(seed)
        sample = emb if n <= 64 * lists else emb[np.sort(rng.choice(n, 64 * lists, False))]
        index.train(sample)
        index.add(emb)
        index.nprobe = min(probes, lists)
        self.index = index

    def top(self, queries: np.ndarray, m: int) -> np.ndarray:
        """``[Q, min(m, N)]`` rows of the best spans per query, best first (as
        ``SpanIndex.top``); -1 fills a query's row where its probed lists hold fewer than
        ``m`` spans (the caller answers that query exactly)."""
        _, rows = self.index.search(np.ascontiguousarray(queries, np.float32),
                                    min(m, self.index.ntotal))
        return rows.astype(np.int64)
