"""Late fusion: the packed pyramid's layout, the model's two halves against the whole, and a
late-fusion bundle through export and both search modes."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.training.config import preset
from gazenlq.training.model import GazeNLQ, with_dims
from gazenlq.training.pyramid import pack, unpack
from tests.conftest import script


@settings(max_examples=40, deadline=None)
@given(levels=st.integers(1, 6), blocks=st.integers(1, 5), data=st.data())
def test_packed_pyramid_round_trips_and_an_aligned_region_holds_exactly_its_points(
        levels, blocks, data):
    coarsest = 2 ** (levels - 1)
    t = blocks * coarsest
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    feats = [torch.randn(2, t // 2**lv, 3, generator=gen) for lv in range(levels)]
    packed = pack(feats)
    assert packed.shape == (2, t, 6)
    mask = torch.ones(2, t, dtype=torch.bool)
    got, masks = unpack(packed, mask, levels)
    assert all(torch.equal(a, b) for a, b in zip(got, feats))
    assert [m.shape[1] for m in masks] == [f.shape[1] for f in feats]
    # the steps [a, b) of the packed tensor are the pyramid of exactly those steps
    a = data.draw(st.integers(0, blocks - 1)) * coarsest
    b = data.draw(st.integers(a // coarsest + 1, blocks)) * coarsest
    part, _ = unpack(packed[:, a:b], mask[:, a:b], levels)
    for lv, (p, f) in enumerate(zip(part, feats)):
        assert torch.equal(p, f[:, a // 2**lv:b // 2**lv])
    # every step holds at most one point of the upper half
    filled = (packed[..., 3:] != 0).any(-1).sum(1)
    assert (filled <= t).all() and (filled == sum(t // 2**lv for lv in range(1, levels))).all()


def _late(variant: str, seed: int = 0) -> GazeNLQ:
    cfg = with_dims(preset("small"), video_dim=32, gaze_dim=64, text_dim=24, variant=variant)
    cfg = replace(cfg, grounding=replace(cfg.grounding, hidden=16, heads=2, stem_blocks=1,
                                         branch_blocks=3, fusion="late"),
                  estimator=replace(cfg.estimator, hidden=16, heads=2, embed_dim=16))
    torch.manual_seed(seed)
    model = GazeNLQ(cfg).eval()
    with torch.no_grad():  # the gate starts as the identity: make the query matter
        for p in model.grounding.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", ["none", "gaze"])
def test_late_models_per_query_half_on_the_cached_pyramid_is_the_whole_model(variant):
    model = _late(variant)
    g = model.grounding
    assert all(b.cross_attn is None for b in (*g.stem, *g.branch)) and not len(g.text_blocks)
    t, rows = 64, 3
    torch.manual_seed(1)
    mask = torch.arange(t)[None, :] < torch.tensor([[64], [50], [9]])
    video = torch.randn(rows, t, 32) * mask[..., None]
    gaze = None
    if variant == "gaze":
        gaze = model.gaze_tokens(torch.randn(rows, t, 64) * mask[..., None], mask)
    tokens, tmask = torch.randn(rows, 5, 24), torch.ones(rows, 5, dtype=torch.bool)
    tmask[1, 3:] = False
    with torch.no_grad():
        v, ge = g.embed_video(video, mask, gaze)
        whole = g.ground(v, ge, mask, tokens, tmask)
        feats, _, levels = g.pyramid(v, ge, mask)
        cached = g.ground_packed(pack(feats), None if levels is None else pack(levels), mask,
                                 tokens, tmask)
        # each query on its clip: the pyramid once per clip, the same result
        clip_of = torch.tensor([2, 0, 0, 1])
        q_tok, q_mask = tokens[[0, 1, 2, 0]], tmask[[0, 1, 2, 0]]
        per_clip = g.ground_clips(v, ge, mask, clip_of, q_tok, q_mask)
        per_row = g.ground(v[clip_of], None if ge is None else ge[clip_of], mask[clip_of],
                           q_tok, q_mask)
        other_query = g.ground(v, ge, mask, tokens.flip(0), tmask.flip(0))
    for a, b in zip(whole, cached):
        assert torch.equal(a, b)
    for a, b in zip(per_clip, per_row):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(whole[0], other_query[0])  # the query steers the scores


@pytest.mark.slow
def test_late_bundle_exports_and_every_span_a_candidate_is_exactly_exhaustive(
        tiny_trained, tmp_path):
    """A late-fusion model of the tiny stores' widths (random weights) through gaze-export's
    validation, then the engine: coarse to fine with every span a candidate returns exactly
    the exhaustive search, and a few candidates see a fraction of the steps."""
    from benchmarks.models import random_checkpoint
    from gazenlq.engine import SearchEngine
    from gazenlq.export.exporter import export_bundle
    from gazenlq.training import checkpoint
    from tests.test_training_run import tiny_config

    data, trained = tiny_trained
    conf = checkpoint.load_config(trained)
    cfg = type(tiny_config()).from_dict(conf["train_config"])
    cfg = replace(cfg, grounding=replace(cfg.grounding, fusion="late"))
    ckpt = random_checkpoint(cfg, tmp_path / "ckpt", grid=checkpoint.time_grid(trained, conf),
                             score_gain=20.0)
    bundle = tmp_path / "bundle"
    report = export_bundle(ckpt, bundle, threads=1)
    assert {r.graph for r in report.parity} == {"text", "video", "ground"}
    assert all(r.ok for r in report.parity)
    assert report.agreement["fp32"].top5 >= 0.99
    lib = tmp_path / "lib"
    shutil.copytree(data.stores, lib, ignore=shutil.ignore_patterns("cache"))
    queries = ["where did I put the knife", "what did I put in the box", "where is the cup"]

    def engine(**options):
        return SearchEngine.from_bundle(bundle, window=256, overlap=64, **options)

    exhaustive = engine(mode="exhaustive").search(lib, queries, top_k=5)
    every = engine(mode="coarse", candidates=10**6).search(lib, queries, top_k=5)
    assert [r.moments for r in every] == [r.moments for r in exhaustive]
    assert all(len(r.moments) == 5 for r in exhaustive)
    few = engine(mode="coarse", candidates=4).search(lib, queries, top_k=5)
    assert 0 < few.timings.fine_steps < every.timings.fine_steps / 4
    # the cached embeddings are the packed pyramids: twice the hidden width
    width = {t.name: t.shape[-1] for t in engine().manifest.graph("video").outputs}
    assert width["video_emb"] == width["gaze_emb"] == 2 * cfg.grounding.hidden
    assert np.isfinite([m.score for r in few for m in r.moments]).all()


@pytest.mark.parametrize("asked", [["--fusion", "late"], []])
def test_cli_refuses_the_looked_at_feed_with_late_fusion(tmp_path, asked):
    """Asked for, or the small preset's own: the feed needs early fusion's query gate."""
    looked = tmp_path / "looked_at.json"
    looked.write_text("{}")
    r = subprocess.run([script("gaze-train"), str(tmp_path), "--out", str(tmp_path / "run"),
                        *asked, "--looked-at", str(looked), "--feed-looked-at"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--fusion early" in r.stderr
    assert ("--fusion late" if asked else "small preset") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
