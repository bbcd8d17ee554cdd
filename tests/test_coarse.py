"""Coarse-to-fine search: the coarse heads and their loss, the span index and its regions,
and the engine's two modes (exactly exhaustive when every span is a candidate)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch

from gazenlq.engine import SearchEngine
from gazenlq.engine.coarse import SpanIndex, StoreSpans
from gazenlq.errors import ParameterError
from gazenlq.training.coarse import CoarseHeads, coarse_loss, span_count, span_targets
from gazenlq.training.config import CoarseConfig
from tests.conftest import reexported_copy, script

CFG = CoarseConfig(enabled=True, span=4, dim=8)


# -- the heads and the loss -------------------------------------------------------------

def test_spans_are_masked_means_and_padding_spans_are_zero():
    torch.manual_seed(0)
    heads = CoarseHeads(CFG, hidden=6, text_dim=5, gaze=False)
    video = torch.randn(2, 10, 6)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :10], mask[1, :3] = True, True
    out = heads.spans(video, None, mask)
    assert out.shape == (2, span_count(10, 4), 8) == (2, 3, 8)
    want = torch.nn.functional.normalize(heads.video(video[0, 8:10].mean(0)), dim=-1)
    torch.testing.assert_close(out[0, 2], want)  # the partial last span: its 2 steps
    want = torch.nn.functional.normalize(heads.video(video[1, 0:3].mean(0)), dim=-1)
    torch.testing.assert_close(out[1, 0], want)
    assert (out[1, 1:] == 0).all()  # no valid step
    # padded steps' values never matter
    noisy = video.clone()
    noisy[1, 3:] = 1e3
    torch.testing.assert_close(heads.spans(noisy, None, mask), out)


def test_span_targets_mark_the_spans_an_answer_overlaps_in_its_own_clip():
    answers = torch.tensor([[5.0, 9.0], [0.0, 1.0]])
    got = span_targets(answers, torch.tensor([1, 0]), clips=2, spans=3, span=4)
    # query 0 (clip 1): spans [4, 8) and [8, 12); query 1 (clip 0): span [0, 4)
    assert got.tolist() == [[False, False, False, False, True, True],
                            [True, False, False, False, False, False]]


def test_coarse_loss_is_low_when_the_answer_span_matches_and_trains_down():
    torch.manual_seed(1)
    heads = CoarseHeads(CFG, hidden=6, text_dim=5, gaze=True)
    video, gaze = torch.randn(3, 12, 6), torch.randn(3, 12, 6)
    mask = torch.ones(3, 12, dtype=torch.bool)
    tokens, tmask = torch.randn(4, 7, 5), torch.ones(4, 7, dtype=torch.bool)
    answers = torch.tensor([[0.0, 3.0], [4.0, 7.0], [8.0, 11.0], [1.0, 2.0]])
    clip_of = torch.tensor([0, 1, 2, 2])
    first = coarse_loss(heads, video, gaze, mask, tokens, tmask, answers, clip_of)
    assert first > 0
    opt = torch.optim.Adam(heads.parameters(), 1e-2)
    for _ in range(200):
        loss = coarse_loss(heads, video, gaze, mask, tokens, tmask, answers, clip_of)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss < 0.1 * first
    # the inputs are detached: the grounding model's embeddings get no gradient
    v = video.clone().requires_grad_()
    coarse_loss(heads, v, gaze, mask, tokens, tmask, answers, clip_of).backward()
    assert v.grad is None


def test_coarse_heads_do_not_change_the_grounding_models_initial_weights():
    from gazenlq.training.config import preset
    from gazenlq.training.model import GazeNLQ

    cfg = preset("small")
    torch.manual_seed(3)
    with_heads = GazeNLQ(cfg)
    after = torch.rand(1)
    torch.manual_seed(3)
    without = GazeNLQ(replace(cfg, coarse=replace(cfg.coarse, enabled=False)))
    assert torch.rand(1) == after  # the global RNG advanced exactly as without the heads
    for (name, a), (_, b) in zip(with_heads.grounding.state_dict().items(),
                                 without.grounding.state_dict().items()):
        assert torch.equal(a, b), name
    coarse = {id(p) for p in with_heads.coarse.parameters()}
    groups = with_heads.clip_groups()
    assert len(groups) == 2 and {id(p) for p in groups[1]} == coarse
    assert not coarse & {id(p) for p in groups[0]}


# -- the span index ----------------------------------------------------------------------

def _index(valid=(40, 25), span=4, dim=3, seed=0) -> SpanIndex:
    rng = np.random.default_rng(seed)
    stores = [StoreSpans(f"s{i}", rng.standard_normal((2, 10, dim)).astype(np.float16),
                         np.array([0, 30]), np.array(valid)) for i in range(2)]
    return SpanIndex(stores, span)


def test_index_rows_skip_padding_spans_and_top_is_exact():
    index = _index()
    assert len(index) == 2 * (10 + 7)  # a 25-step window has 7 spans of 4 steps
    q = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    scores = index.scores(q)
    np.testing.assert_allclose(scores, q @ index.emb.T, rtol=1e-6)
    top = index.top(scores, 5)
    for row, best in zip(scores, top):
        assert list(best) == list(np.argsort(-row, kind="stable")[:5])
    assert index.top(scores, 10**6).shape == (3, len(index))


def test_regions_add_context_align_merge_and_clip_to_the_window():
    index = _index()
    rows = {(int(s), int(w), int(i)): r for r, (s, w, i) in
            enumerate(zip(index.store, index.window, index.index))}
    pick = [rows[(0, 0, 5)], rows[(0, 0, 6)], rows[(0, 0, 9)], rows[(1, 1, 6)]]
    regions = index.regions(np.array(pick), context=3, multiple=4)
    # spans 5 and 6 of store 0 window 0: [17, 27) and [21, 31), starts aligned down to 16
    # and 20, merged; span 9: [33, 43) clipped to the 40 valid steps, aligned to [32, 40)
    assert [(r.store, r.window, r.start, r.stop) for r in regions] == [
        (0, 0, 16, 31), (0, 0, 32, 40), (1, 1, 20, 25)]
    whole = index.regions(np.array([rows[(0, 0, i)] for i in range(10)]), context=0,
                          multiple=4)
    assert [(r.start, r.stop) for r in whole] == [(0, 40)]


# -- the engine's two modes ---------------------------------------------------------------

def _engine(bundle, **options) -> SearchEngine:
    return SearchEngine.from_bundle(bundle, window=256, overlap=64, **options)


def test_every_span_a_candidate_is_exactly_the_exhaustive_search(tiny_trained, tiny_bundle,
                                                                 tmp_path):
    data, _ = tiny_trained
    lib = tmp_path / "lib"
    shutil.copytree(data.stores, lib, ignore=shutil.ignore_patterns("cache"))
    queries = ["where did I put the knife", "what did I put in the box", "where is the cup"]
    exhaustive = _engine(tiny_bundle, mode="exhaustive").search(lib, queries, top_k=5)
    coarse = _engine(tiny_bundle, mode="coarse", candidates=10**6)
    every = coarse.search(lib, queries, top_k=5)
    assert [r.moments for r in every] == [r.moments for r in exhaustive]
    assert every.timings.fine_steps > 0 and every.timings.coarse > 0
    few = _engine(tiny_bundle, mode="coarse", candidates=4).search(lib, queries, top_k=5)
    assert 0 < few.timings.fine_steps < every.timings.fine_steps / 4
    assert all(len(r.moments) == 5 for r in few)
    # auto: coarse here (the library exceeds one window), exhaustive when the cache is off
    assert _engine(tiny_bundle).search(lib, queries).timings.fine_steps > 0
    off = _engine(tiny_bundle, use_cache=False, write_cache=False).search(lib, queries)
    assert off.timings.fine_steps == 0 and off.timings.coarse == 0


def test_another_bundles_index_is_rebuilt_and_a_new_store_is_found(tiny_trained, tiny_bundle,
                                                                   tmp_path):
    data, _ = tiny_trained
    stores = sorted(data.stores.glob("*.zarr"))
    lib = tmp_path / "lib"
    lib.mkdir()
    for s in stores[:3]:
        shutil.copytree(s, lib / s.name, ignore=shutil.ignore_patterns("cache"))
    engine = _engine(tiny_bundle, mode="coarse")
    first = engine.index(lib)
    assert first.windows > 0 and first.cached_windows == 0
    again = engine.index(lib)
    assert again.video_model == 0 and again.windows == again.cached_windows  # nothing new
    # a store added later: the next search indexes it alone and finds it
    shutil.copytree(stores[3], lib / stores[3].name, ignore=shutil.ignore_patterns("cache"))
    found = engine.search(lib, "where did I put the knife", top_k=50)
    assert found.timings.video_model > 0
    assert found.timings.windows - found.timings.cached_windows == len(
        engine._plan(lib / stores[3].name).windows)
    assert len(found.stores) == 4
    # another bundle (same graphs, another video graph hash) re-indexes the library
    other = reexported_copy(tiny_bundle, tmp_path / "other")
    rebuilt = _engine(other, mode="coarse").search(lib, "where did I put the knife")
    assert rebuilt.timings.cached_windows == 0 and rebuilt.timings.video_model > 0
    for store in lib.iterdir():  # one index per store: the other bundle's was replaced
        assert len([p for p in (store / "cache").iterdir() if p.is_dir()]) == 1


def test_bundles_without_a_coarse_stage_search_exhaustively(tiny_trained, tiny_bundle,
                                                            tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("coarse")
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ParameterError, match=r"^mode='coarse': this bundle has no coarse"):
        _engine(old, mode="coarse")
    data, _ = tiny_trained
    res = _engine(old).search(data.stores, "where did I put the knife")
    assert res.timings.fine_steps == 0 and res[0].moments


def test_cli_mode_candidates_and_explain(tiny_trained, tiny_bundle):
    data, _ = tiny_trained
    out = subprocess.run([script("gaze-search"), str(data.stores), "where did I put the knife",
                          "--bundle", str(tiny_bundle), "--window", "256", "--overlap", "64",
                          "--mode", "coarse",
                          "--candidates", "3", "--explain", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["timings"]["fine_steps"] > 0 and doc["timings"]["coarse"] > 0
    assert len(doc["results"][0]["moments"]) == 5
