"""The ANN option of coarse-to-fine search: recall of the faiss index against exact inner
products, the ``ann_min_spans`` switch, the missing-extra error, and the engine's results
with ANN off (exact) or forced on a small library (where every list is probed: exact too)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gazenlq.cli.search import main as search_main
from gazenlq.engine import SearchEngine, ann
from gazenlq.engine.coarse import SpanIndex, StoreSpans
from gazenlq.errors import MissingDependencyError

needs_faiss = pytest.mark.skipif(not ann.available(),
                                 reason="the ann extra (faiss-cpu) is not installed")


def _library(n: int, dim: int = 128, seed: int = 0) -> SpanIndex:
    """``n`` unit spans around ``n / 100`` centres, as one store of 16-span windows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(4, n // 100), dim))
    rows = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)) * 0.1
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    emb = rows.reshape(n // 16, 16, dim).astype(np.float16)
    return SpanIndex([StoreSpans("s", emb, np.zeros(n // 16, int), np.full(n // 16, 64))], 4)


def _queries(index: SpanIndex, q: int = 32, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = index.emb[rng.integers(0, len(index), q)] + rng.standard_normal(
        (q, index.emb.shape[1])).astype(np.float32) * 0.05
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@needs_faiss
def test_ann_top_spans_recall_exact_ones_best_first():
    index = _library(4096)
    queries = _queries(index)
    index.ann_min_spans = 0
    exact = index.nearest(queries, 8)
    index.ann_min_spans = len(index)
    found = index.nearest(queries, 8)
    assert index._ann is not None and found.shape == exact.shape == (32, 8)
    recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(found, exact)])
    assert recall >= 0.9
    scores = np.take_along_axis(index.scores(queries), found, 1)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # more candidates than the probed lists hold: those queries are answered exactly
    every = index.nearest(queries[:2], len(index))
    assert sorted(every[0]) == list(range(len(index)))


def test_threshold_switches_between_exact_and_ann(monkeypatch):
    index = _library(512)
    for threshold, used in ((0, False), (len(index) + 1, False), (len(index), True), (1, True)):
        index.ann_min_spans = threshold
        assert index.uses_ann() is used, threshold
    index.ann_min_spans = None  # the measured default, and only with the extra installed
    assert not index.uses_ann()  # 512 spans: below ANN_MIN_SPANS
    monkeypatch.setattr(ann, "ANN_MIN_SPANS", 100)
    monkeypatch.setattr(ann, "available", lambda: True)
    assert index.uses_ann()
    monkeypatch.setattr(ann, "available", lambda: False)
    assert not index.uses_ann()


def test_asking_for_ann_without_the_extra_names_it(monkeypatch, tiny_trained, tiny_bundle,
                                                    capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails
    assert not ann.available()
    index = _library(512)
    queries = _queries(index, 4)
    index.ann_min_spans = None  # default without the extra: exact, no error
    assert index.nearest(queries, 8).shape == (4, 8)
    index.ann_min_spans = 1
    with pytest.raises(MissingDependencyError, match=r"pip install 'gazenlq\[ann\]'"):
        index.nearest(queries, 8)
    data, _ = tiny_trained
    with pytest.raises(SystemExit) as exit_:
        search_main([str(data.stores), "where did I put the knife", "--bundle",
                     str(tiny_bundle), "--window", "256", "--overlap", "64", "--mode",
                     "coarse", "--ann-min-spans", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "gazenlq[ann]" in err, err


@needs_faiss
def test_engine_results_with_ann_off_and_forced_on_a_small_library(tiny_trained, tiny_bundle,
                                                                   monkeypatch):
    data, _ = tiny_trained
    queries = ["where did I put the knife", "what did I put in the box", "where is the cup"]

    def search(**options):
        engine = SearchEngine.from_bundle(tiny_bundle, window=256, overlap=64, mode="coarse",
                                          candidates=4, **options)
        return engine, engine.search(data.stores, queries, top_k=5)

    _, default = search()
    with monkeypatch.context() as m:  # off: the ANN index is never built
        m.setattr("gazenlq.engine.ann.SpanANN", None)
        off_engine, off = search(ann_min_spans=0)
    assert off_engine._library[1]._ann is None
    assert [r.moments for r in off] == [r.moments for r in default]
    on_engine, on = search(ann_min_spans=1)
    assert on_engine._library[1]._ann is not None
    assert [r.moments for r in on] == [r.moments for r in off]
