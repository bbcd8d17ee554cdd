"""Coarse-to-fine's span search: exact BLAS inner products vs the ANN index (faiss).

    python -m benchmarks.bench_ann [--quick]

Span matrices of 10k to 2M rows x 128 (50k spans is about 100 h of video at span 16;
Ego4D's 3,670 h about 1.7M): the real span embeddings of the long-video benchmark's 10-hour
library (benchmarks/out/longvideo, when present) tiled and perturbed to size, else clustered
unit vectors. Queries are perturbed spans. Per size: latency of one query and of 64 queries
per call, exact (``SpanIndex.top`` of ``scores``) vs ANN (``SpanANN.top``), ANN recall@8
against exact, ANN build seconds and the index's memory. The crossover - the smallest size
from which ANN is faster at both batch sizes with recall@8 >= 0.95 - is the engine's
default ``ann_min_spans`` (gazenlq.engine.ann.ANN_MIN_SPANS). Writes results/ann.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Section, measure, write_result
from gazenlq.engine.ann import ANN_MIN_SPANS, SpanANN
from gazenlq.engine.coarse import SpanIndex

DIM, M, NOISE = 128, 8, 0.5
SIZES = (2_000, 5_000, 10_000, 20_000, 50_000, 200_000, 1_000_000, 2_000_000)
QUICK = (5_000, 50_000)
REAL = ROOT / "out" / "longvideo"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def real_spans(root: Path) -> np.ndarray | None:
    """The non-padding span embeddings of the long-video benchmark's largest library."""
    files = sorted(root.glob("long-10h-*/stores/*.zarr/cache/*/coarse_emb.npy"))
    if not files:
        return None
    rows = np.concatenate([np.load(f).reshape(-1, DIM) for f in files]).astype(np.float32)
    return _unit(rows[np.linalg.norm(rows, axis=1) > 0.5])


def spans(base: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit rows: ``base`` rows drawn with replacement plus noise of norm about
    ``NOISE``, or (no base) points around ``n / 200`` random centres."""
    if base is None:
        base = _unit(rng.standard_normal((max(16, n // 200), DIM)))
    pick = base[rng.integers(0, len(base), n)]
    return _unit(pick + rng.standard_normal((n, DIM)).astype(np.float32) * NOISE / DIM**.5)


def index_of(emb: np.ndarray) -> SpanIndex:
    """A SpanIndex holding ``emb`` as its rows (one store, one window)."""
    index = SpanIndex([], 16, ann_min_spans=0)
    index.emb = emb
    return index


def index_mib(ann: SpanANN) -> float:
    """Memory of the ANN index: its inverted lists (a copy of every row and its id) and
    the list centroids."""
    ivf = ann.index
    rows = sum(ivf.invlists.list_size(i) for i in range(ivf.nlist))
    return (rows * (ivf.code_size + 8) + ivf.nlist * ivf.d * 4) / 2**20


def one_size(n: int, base: np.ndarray | None, rng: np.random.Generator) -> list:
    """One table row: latencies (ms), recall, build time and memory at ``n`` spans."""
    emb = spans(base, n, rng)
    queries = spans(emb[rng.integers(0, n, 64)], 64, rng)
    exact = index_of(emb)
    truth = exact.nearest(queries, M)
    t0 = time.perf_counter()
    ann = SpanANN(emb)
    build = time.perf_counter() - t0
    found = ann.top(queries, M)
    recall = float(np.mean([len(set(a) & set(b)) / M for a, b in zip(found, truth)]))
    reps = 3 if n >= 1_000_000 else 10
    e1 = measure(lambda: exact.nearest(queries[:1], M), repeat=reps * 3)
    a1 = measure(lambda: ann.top(queries[:1], M), repeat=reps * 3)
    e64 = measure(lambda: exact.nearest(queries, M), repeat=reps)
    a64 = measure(lambda: ann.top(queries, M), repeat=reps)
    return [n, e1.median * 1e3, a1.median * 1e3, e64.median * 1e3, a64.median * 1e3, recall,
            build, build / n * 1e6, index_mib(ann), emb.nbytes / 2**20]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--spans-from", type=Path, default=REAL,
                    help="the long-video benchmark's output (its 10-hour library's spans)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    base = real_spans(args.spans_from)
    source = (f"real span embeddings ({len(base)} rows) tiled + perturbed" if base is not None
              else "clustered unit vectors")
    lat = Section("Top-8 spans per query: exact BLAS vs ANN (faiss IVF-Flat)",
                  ["spans", "exact 1 q ms", "ANN 1 q ms", "exact 64 q ms", "ANN 64 q ms",
                   "ANN recall@8", "ANN build s", "build s / 1M spans", "ANN index MiB",
                   "span matrix MiB"])
    crossover = None
    for n in QUICK if args.quick else SIZES:
        lat.rows.append(one_size(n, base, rng))
        print(json.dumps(dict(zip(lat.columns, lat.rows[-1]))), flush=True)
        e1, a1, e64, a64, recall = (lat.rows[-1][i] for i in (1, 2, 3, 4, 5))
        if crossover is None and recall >= 0.95 and a1 < e1 and a64 < e64:
            crossover = n
    lat.notes = (f"Spans: {source}; queries: 64 perturbed spans. Exact = SpanIndex.top of "
                 f"the [Q, N] scores (the engine's path below the threshold); ANN = "
                 f"SpanANN.top (about 2 sqrt(N) lists, 64 probed). Index memory: its lists "
                 f"(a copy of the rows plus 8-byte ids) and centroids. Crossover (smallest size "
                 f"where ANN wins at 1 and 64 queries with recall@8 >= 0.95): {crossover}; "
                 f"the engine's default ANN_MIN_SPANS is {ANN_MIN_SPANS}. Threads: "
                 f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
                 f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.")
    write_result("ann", "Coarse span search: exact vs ANN", [lat],
                 summary={"crossover_spans": crossover, "ann_min_spans": ANN_MIN_SPANS,
                          "source": source})
    print(json.dumps({"crossover_spans": crossover}))


if __name__ == "__main__":
    main()
