"""The gaze_reg / gaze_pool variants (Gaze-VLM's attention regulariser): the loss, its
masking and weight, the data it reads, the plan without stage 1, and train -> export ->
gaze-search end to end."""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.store import GAZE_MAPS, GAZE_TYPE, FeatureStore, GazeType
from gazenlq.training.config import GazePoolConfig
from gazenlq.training.data import GroundingDataset, _gaze_cells, clip_items
from gazenlq.training.experiment import plan
from gazenlq.training.gaze_pool import GazePool, attention_kl
from gazenlq.training.model import GazeNLQ, with_dims
from gazenlq.training.run import grounding_step
from gazenlq.training.targets import PositiveNormaliser
from tests.conftest import script
from tests.test_training_run import tiny_config

CELL = 8  # cell feature width of the synthetic inputs (16 cells x 8 = 128)


def _kl_reference(logits: np.ndarray, mass: np.ndarray, has: np.ndarray, eps: float) -> float:
    """KL(P || A) written out per step in float64, averaged over the steps with gaze."""
    total, n = 0.0, 0
    for lg, m, h in zip(logits.reshape(-1, 16), mass.reshape(-1, 16), has.reshape(-1)):
        if not h:
            continue
        a = np.exp(lg - lg.max())
        a /= a.sum()
        p = (m + eps) / (m + eps).sum()
        total += sum(pi * math.log(pi / ai) for pi, ai in zip(p, a))
        n += 1
    return total / max(n, 1)


def test_kl_of_uniform_attention_to_one_cell_is_log_16():
    """By hand: A uniform over 16 cells, all gaze in one cell (eps 0): KL = ln 16."""
    mass = torch.zeros(1, 1, 16)
    mass[0, 0, 5] = 1.0
    kl = attention_kl(torch.zeros(1, 1, 16), mass, torch.ones(1, 1, dtype=torch.bool), 0.0)
    assert kl.item() == pytest.approx(math.log(16), abs=1e-6)
    # attention on the gazed cell alone drives it to (almost) zero
    peaked = torch.full((1, 1, 16), -30.0)
    peaked[0, 0, 5] = 30.0
    assert float(attention_kl(peaked, mass, torch.ones(1, 1, dtype=torch.bool), 0.0)) < 1e-6


def test_kl_matches_reference_and_steps_without_gaze_add_nothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 16, generator=g, dtype=torch.float64, requires_grad=True)
    mass = torch.rand(2, 7, 16, generator=g, dtype=torch.float64)
    has = torch.rand(2, 7, generator=g) > 0.4
    kl = attention_kl(logits, mass, has, 1e-4)
    assert kl.item() == pytest.approx(
        _kl_reference(logits.detach().numpy(), mass.numpy(), has.numpy(), 1e-4), rel=1e-9)
    kl.backward()
    assert torch.all(logits.grad[~has] == 0) and torch.any(logits.grad[has] != 0)
    # whatever the steps without gaze hold, the loss stays the same
    other = torch.where(has.unsqueeze(-1), mass, torch.rand_like(mass) * 9)
    assert attention_kl(logits, other, has, 1e-4).item() == pytest.approx(kl.item(), rel=1e-12)
    none = attention_kl(logits, mass, torch.zeros_like(has), 1e-4)
    assert none.item() == 0.0 and none.requires_grad


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), t=st.integers(1, 9), seed=st.integers(0, 2**16),
       scale=st.floats(0.0, 50.0))
def test_attention_is_a_distribution_over_16_cells(b, t, seed, scale):
    torch.manual_seed(seed)
    pool = GazePool(GazePoolConfig(), 16 * CELL)
    feats = torch.randn(b, t, 16 * CELL) * scale
    mask = torch.rand(b, t) > 0.3
    a = pool.attention(feats)
    assert a.shape == (b, t, 16) and torch.all(a >= 0)
    assert torch.allclose(a.sum(-1), torch.ones(b, t), atol=1e-5)
    tokens, logits = pool(feats, mask)
    assert tokens.shape == (b, t, CELL) and torch.all(tokens[~mask] == 0)
    assert torch.allclose(torch.softmax(logits, -1), a)
    # a token is the attention-weighted mean of its step's cells
    cells = feats.view(b, t, 16, CELL)
    assert torch.allclose(tokens[mask], (a.unsqueeze(-1) * cells).sum(2)[mask], atol=1e-4)


def _model_and_batch(variant: str, weight: float = 100.0):
    cfg = with_dims(tiny_config(), video_dim=12, gaze_dim=16 * CELL, text_dim=10,
                    variant=variant)
    cfg = replace(cfg, pool=replace(cfg.pool, weight=weight),
                  grounding=replace(cfg.grounding, branch_blocks=2))
    torch.manual_seed(0)
    model = GazeNLQ(cfg)
    g = torch.Generator().manual_seed(1)
    t = 16
    mask = torch.ones(2, t, dtype=torch.bool)
    mask[1, 11:] = False
    batch = {"video": torch.randn(2, t, 12, generator=g) * mask.unsqueeze(-1),
             "gaze": torch.randn(2, t, 16 * CELL, generator=g) * mask.unsqueeze(-1),
             "mask": mask, "clip_of": torch.tensor([0, 1, 1]),
             "answers": torch.tensor([[2.0, 6.0], [1.0, 3.0], [4.0, 9.0]]),
             "tokens": torch.randn(3, 5, 10, generator=g),
             "text_mask": torch.ones(3, 5, dtype=torch.bool),
             "gaze_cells": torch.rand(2, t, 16, generator=g),
             "has_gaze": torch.rand(2, t, generator=g) > 0.3}
    return model, batch


def _pool_grads(model: GazeNLQ, batch: dict) -> tuple[dict, list[torch.Tensor]]:
    model.train()
    model.zero_grad()
    losses = grounding_step(model, batch, PositiveNormaliser())
    losses["loss"].backward()
    return losses, [p.grad.clone() for p in model.pool.parameters()]


def test_lambda_zero_adds_no_regularisation_gradient():
    """gaze_pool (lambda 0): the gradient does not depend on the gaze targets at all;
    gaze_reg: it does, by lambda x the KL's gradient."""
    for variant, depends in (("gaze_pool", False), ("gaze_reg", True)):
        model, batch = _model_and_batch(variant)
        losses, grads = _pool_grads(model, batch)
        assert losses["attn_kl"].item() > 0  # measured at any weight
        moved = {**batch, "gaze_cells": batch["gaze_cells"].flip(-1)}
        _, other = _pool_grads(model, moved)
        same = all(torch.equal(a, b) for a, b in zip(grads, other))
        assert same != depends, variant
    # gaze_reg's extra gradient is exactly lambda x the KL's
    model, batch = _model_and_batch("gaze_reg", weight=3.0)
    _, with_reg = _pool_grads(model, batch)
    twin, _ = _model_and_batch("gaze_pool")
    twin.load_state_dict(model.state_dict())
    _, without = _pool_grads(twin, batch)
    model.zero_grad()
    _, logits = model.pool(batch["gaze"], batch["mask"])
    (3.0 * attention_kl(logits, batch["gaze_cells"], batch["has_gaze"] & batch["mask"],
                        model.cfg.pool.eps)).backward()
    for a, b, p in zip(with_reg, without, model.pool.parameters()):
        assert torch.allclose(a - b, p.grad, atol=1e-5)


def test_pool_variants_need_cell_features_and_no_estimator():
    cfg = with_dims(tiny_config(), video_dim=12, gaze_dim=16 * CELL, text_dim=10,
                    variant="gaze_reg")
    model = GazeNLQ(cfg)
    assert model.estimator is None and model.gaze_source is model.pool
    assert not any(k.startswith("estimator.") for k in model.state_dict())
    assert cfg.gaze_reg_weight == 100.0
    assert replace(cfg, grounding=replace(cfg.grounding, gaze="gaze_pool")).gaze_reg_weight == 0
    from gazenlq.errors import GazeNLQError

    with pytest.raises(GazeNLQError, match="not a multiple of 16"):
        with_dims(tiny_config(), video_dim=12, gaze_dim=100, text_dim=10, variant="gaze_pool")


def test_plan_trains_stage1_only_for_the_estimator_variants(tmp_path):
    jobs = plan(["gaze_reg", "gaze_pool"], [0], tmp_path)
    assert [j.name for j in jobs] == ["gaze_reg-s0", "gaze_pool-s0"]
    assert all(j.after is None and j.estimator is None for j in jobs)
    jobs = {j.name: j for j in plan(["gaze_reg", "gaze", "none"], [0], tmp_path)}
    assert jobs["stage1-s0"].run_dir == tmp_path / "gaze-s0"
    assert jobs["gaze-s0"].after == "stage1-s0" and jobs["gaze_reg-s0"].after is None


def test_report_lists_attention_vs_gaze_of_the_pooling_runs(tmp_path):
    from gazenlq.training.experiment import METRICS, write_report

    att = {"attn_kl": 1.25, "attn_cc": 0.375, "attn_uniform_kl": 1.625}
    rows = [{"variant": v, "seeds": [0], "mean": dict.fromkeys(METRICS, 1.0),
             "std": dict.fromkeys(METRICS, 0.0), "runs": {"R1@0.3": [1.0]},
             "stage1": [None], "attention": [a], "parameters": 10**6}
            for v, a in (("gaze_reg", att), ("none", None))]
    write_report({"preset": "small", "split": "test", "rows": rows, "date": "today",
                  "prior_baseline": dict.fromkeys(METRICS, 0.0)}, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| gaze_reg | 0 | 1.250 | 0.375 | 1.625 |" in text
    assert "Stage 1" not in text  # no estimator was trained


def test_dataset_reads_gaze_cells_where_there_is_gaze(egosim_small):
    """Per step: the map's mass in each 16 x 16-pixel cell of the 64 x 64 map, row-major,
    and has_gaze = tracked; a store without maps has no gaze anywhere."""
    _, out, _ = egosim_small
    stores = [FeatureStore.open(p) for p in sorted((out / "stores").glob("*.zarr"))]
    tracked = next(s for s in stores if s.has_gaze_maps)
    untracked = next(s for s in stores if not s.has_gaze_maps)
    got = _gaze_cells(tracked, 10, 90, 4)
    maps = tracked.read(GAZE_MAPS, 10, 90).astype(np.float32)  # stored as float16
    by_hand = np.array([[maps[t, 16 * r:16 * r + 16, 16 * c:16 * c + 16].sum()
                         for r in range(4) for c in range(4)] for t in range(80)])
    assert np.allclose(got["gaze_cells"], by_hand, atol=1e-5)
    assert np.array_equal(got["has_gaze"],
                          tracked.read(GAZE_TYPE, 10, 90) != GazeType.UNTRACKED)
    assert got["has_gaze"].any()
    none = _gaze_cells(untracked, 0, 30, 4)
    assert none["gaze_cells"].shape == (30, 16)
    assert not none["has_gaze"].any() and not none["gaze_cells"].any()
    # the dataset hands them on, padded and masked by the collate
    from gazenlq.nlq.annotations import load_queries

    items = clip_items(load_queries(out / "annotations" / "nlq_train.json"), out / "stores")
    ds = GroundingDataset(items, {q.text: 0 for it in items for q in it.queries},
                          max_len=64, with_gaze=True, seed=0, gaze_grid=4)
    row = ds[0]
    assert row["gaze_cells"].shape == (len(row["video"]), 16)
    assert row["has_gaze"].shape == (len(row["video"]),)


@pytest.fixture(scope="module")
def gaze_reg_bundle(tiny_trained, tmp_path_factory):
    """A tiny gaze_reg model trained on the tiny EgoSim data and exported by the CLI."""
    from gazenlq.training.run import train

    data, _ = tiny_trained
    out = tmp_path_factory.mktemp("gaze_reg")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = train(tiny_config(), data, out / "run", variant="gaze_reg", seed=0,
                        quiet=True)
    finally:
        torch.set_num_threads(threads)
    exp = subprocess.run([script("gaze-export"), str(out / "run" / "stage2" / "best"), "-o",
                          str(out / "bundle"), "--threads", "1", "--json", "--quiet"],
                         capture_output=True, text=True, timeout=900)
    assert exp.returncode == 0, exp.stderr
    return data, out, results


@pytest.mark.slow
def test_gaze_reg_trains_exports_and_searches_like_the_others(gaze_reg_bundle):
    data, out, results = gaze_reg_bundle
    assert not (out / "run" / "stage1").exists()  # no estimator trained
    assert {"attn_kl", "attn_cc", "attn_uniform_kl"} <= set(results["val"])
    assert "stage1" not in results and "test" in results
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["variant"] == "gaze_reg" and manifest["dims"]["gaze_dim"] == 512
    video = manifest["graphs"]["fp32"]["video"]
    assert [s["name"] for s in video["inputs"]] == ["video", "mask", "gaze_features"]
    parity = manifest["validation"]["parity"]
    assert {(p["graph"], p["output"]) for p in parity} >= {("video", "gaze_emb"),
                                                            ("ground", "logits")}
    assert all(p["ok"] and p["max_abs_diff"] <= 1e-4 for p in parity)
    sub = out / "sub.json"
    search = subprocess.run([script("gaze-search"), str(data.stores), "--queries",
                             str(data.val), "--bundle", str(out / "bundle"), "--submission",
                             str(sub), "--quiet"], capture_output=True, text=True,
                            timeout=600)
    assert search.returncode == 0, search.stderr
    ev = subprocess.run([script("gaze-eval"), str(sub), str(data.val), "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "R1@0.3" in ev.stdout
    # the engine's answers are PyTorch's: same top-1 window for every val query
    from gazenlq.export.graphs import load_model
    from gazenlq.nlq.annotations import load_queries
    from gazenlq.nlq.submission import load_submission
    from gazenlq.training.infer import predict
    from gazenlq.training.run import load_text

    model, _ = load_model(out / "run" / "stage2" / "best")
    table = load_queries(data.val)
    ref = predict(model.grounding, model.gaze_source, clip_items(table, data.stores),
                  load_text(model.cfg, [table]))
    eng = {(e.annotation_uid, e.query_idx): e for e in load_submission(sub)}
    assert ref and all(np.allclose(r.predicted_times[0],
                                   eng[(r.annotation_uid, r.query_idx)].predicted_times[0],
                                   atol=1e-3) for r in ref)
