"""Grounding model and gaze estimator: attention parity, padding invariance, targets, losses."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from gazenlq.bundle import level_sizes
from gazenlq.training.config import PRESETS, GazeEstimatorConfig, GroundingConfig, OptimConfig
from gazenlq.training.estimator import GazeEstimator
from gazenlq.training.grounding import GroundingModel, QueryGate
from gazenlq.training.layers import Attention, _softmax, local_attention
from gazenlq.training.targets import (
    PositiveNormaliser,
    assign,
    diou_loss,
    focal_loss,
    grounding_loss,
    point_grid,
    saliency_loss,
)
from gazenlq.training.trainer import EMA, optimizer

TINY = GroundingConfig(video_dim=12, text_dim=10, hidden=16, heads=2, window=5, text_blocks=1,
                       stem_blocks=1, branch_blocks=3, mlp_ratio=2, drop_path=0.0, gaze="none")


def dense_local_reference(q, k, v, key_mask, window):
    t = q.shape[2]
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    valid = ((j - i).abs() <= window // 2)[None, None] & key_mask[:, None, None, :]
    return _softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), valid) @ v


@pytest.mark.parametrize("t", [1, 3, 15, 16, 17, 40, 64, 100])
@pytest.mark.parametrize("window", [3, 9])
def test_blocked_local_attention_equals_dense(t, window):
    g = torch.Generator().manual_seed(t)
    q, k, v = torch.randn(3, 2, 2, t, 8, generator=g).unbind(0)
    mask = torch.rand(2, t, generator=g) > 0.3
    got = local_attention(q, k, v, mask, window)
    torch.testing.assert_close(got, dense_local_reference(q, k, v, mask, window),
                               atol=1e-6, rtol=1e-5)


def test_fully_masked_rows_give_zero():
    q = k = v = torch.randn(1, 1, 20, 4)
    mask = torch.zeros(1, 20, dtype=torch.bool)
    assert local_attention(q, k, v, mask, 9).abs().max() == 0


def test_null_key_attention_matches_torch_add_zero_attn():
    torch.manual_seed(0)
    ours = Attention(8, 2, None, null_key=True).eval()
    ref = torch.nn.MultiheadAttention(8, 2, batch_first=True, add_zero_attn=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x, kv = torch.randn(3, 5, 8), torch.randn(3, 4, 8)
    valid = torch.tensor([[True] * 4, [True, True, False, False], [False] * 4])
    with torch.no_grad():
        got = ours(x, kv, valid)
        want, _ = ref(x, kv, kv, key_padding_mask=~valid)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # with every word masked the step attends to nothing: only the output bias is left
    torch.testing.assert_close(got[2], ours.out.bias.expand(5, 8).detach(), atol=1e-6,
                               rtol=0)


def test_query_gate_starts_as_identity_and_ignores_padded_words():
    gate = QueryGate(4)
    x, text = torch.randn(2, 7, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out, match = gate(x, text, mask)
    torch.testing.assert_close(out, x)
    torch.testing.assert_close(match, torch.zeros(2, 7))
    gate(x, text, mask)[0].square().sum().backward()
    assert gate.proj.weight.grad.abs().sum() > 0  # zero-initialised, yet it learns
    torch.nn.init.normal_(gate.proj.weight)
    noisy = text.clone()
    noisy[1, 1:] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(gate(x, noisy, mask), gate(x, text, mask))
        q = text[1, :1].mean(0)
        out, match = gate(x, text, mask)
        torch.testing.assert_close(out[1], x[1] * (1 + gate.proj(q)))
        # the match score is the gate's product summed over channels, / sqrt(D)
        torch.testing.assert_close(match[1], (x[1] * gate.proj(q)).sum(-1) / 2)
    # the gaze variants' gate adds the gaze context times its own query vector
    gaze_gate = QueryGate(4, gaze=True)
    ctx = torch.randn(2, 7, 4)
    torch.testing.assert_close(gaze_gate(x, text, mask, ctx)[0], x)
    torch.nn.init.normal_(gaze_gate.gaze_proj.weight)
    with torch.no_grad():
        q = text[0].mean(0)
        out, match = gaze_gate(x, text, mask, ctx)
        torch.testing.assert_close(out[0], x[0] + ctx[0] * gaze_gate.gaze_proj(q))
        torch.testing.assert_close(match[0], (ctx[0] * gaze_gate.gaze_proj(q)).sum(-1) / 2)


def test_embed_skip_adds_masked_linear_projections_to_every_embedding():
    cfg = replace(TINY, gaze="gaze", embed_skip=True)
    torch.manual_seed(0)
    model = GroundingModel(cfg, gaze_dim=6).eval()
    plain = GroundingModel(replace(TINY, gaze="gaze"), gaze_dim=6)  # GroundNLQ's embeddings
    assert plain.video_skip is None and plain.text_skip is None and plain.gaze_skip is None
    video, gaze = torch.randn(2, 16, cfg.video_dim), torch.randn(2, 16, 6)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 11:] = False
    video[1, 11:] = gaze[1, 11:] = 0.0
    tokens = torch.randn(2, 5, cfg.text_dim)
    text_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    m, tm = mask.unsqueeze(-1).float(), text_mask.unsqueeze(-1).float()
    with torch.no_grad():
        got_v, got_g = model.embed_video(video, mask, gaze)
        x = video
        for layer in model.video_embed:
            x = layer(x, mask)
        want_v = x + (model.video_skip(video) + model.position[:16]) * m
        g = (model.gaze_embed(gaze) + model.gaze_skip(gaze)) * m
        want_g = model.fusion.attend_gaze(want_v, g, mask)
        got_t = model.encode_text(tokens, text_mask)
        t = (model.text_embed(tokens) + model.text_skip(tokens)) * tm
        for block in model.text_blocks:
            t = block(t, text_mask)
    torch.testing.assert_close(got_v, want_v)
    torch.testing.assert_close(got_g, want_g)
    torch.testing.assert_close(got_t, t)
    # the skips' biases do not leak into padded steps or words
    assert got_v[1, 11:].abs().max() == 0 and got_g[1, 11:].abs().max() == 0


def test_saliency_loss_known_values():
    zeros = torch.zeros(3, 4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[2, 3] = False
    # step centres 0.5 .. 3.5: [1, 3] holds steps 1 and 2; [2.1, 2.3] only the step of its
    # centre (2); on the padded row the softmax runs over 3 steps
    gt = torch.tensor([[1.0, 3.0], [2.1, 2.3], [1.0, 3.0]])
    for row, want in enumerate([math.log(2), math.log(4), math.log(1.5)]):
        got = saliency_loss(zeros[row:row + 1], mask[row:row + 1], gt[row:row + 1])
        torch.testing.assert_close(got, torch.tensor(want))
    # raising the scores inside the answer lowers the loss towards 0; padding is ignored
    scores = torch.zeros(1, 4, requires_grad=True)
    loss = saliency_loss(scores, mask[:1], gt[:1])
    loss.backward()
    assert scores.grad[0, 1] < 0 and scores.grad[0, 2] < 0 and scores.grad[0, 0] > 0
    high = torch.tensor([[0.0, 30.0, 30.0, 0.0]])
    assert float(saliency_loss(high, mask[:1], gt[:1])) < 1e-9
    padded = torch.tensor([[0.0, 0.0, 0.0, 1e4]])
    torch.testing.assert_close(saliency_loss(padded, mask[2:], gt[2:]),
                               torch.tensor(math.log(1.5)))


def _inputs(t: int, valid: int, q: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.zeros(q, t, 12)
    video[:, :valid] = torch.randn(q, valid, 12, generator=g)
    mask = torch.zeros(q, t, dtype=torch.bool)
    mask[:, :valid] = True
    tokens = torch.randn(q, 6, 10, generator=g)
    tmask = torch.ones(q, 6, dtype=torch.bool)
    tmask[0, 4:] = False
    return video, mask, tokens, tmask


@pytest.mark.parametrize("gaze", ["none", "gaze"])
def test_padding_does_not_change_valid_outputs(gaze):
    torch.manual_seed(0)
    model = GroundingModel(replace(TINY, gaze=gaze), gaze_dim=7 if gaze != "none" else None)
    model.eval()
    outs = []
    for t in (48, 96):
        video, mask, tokens, tmask = _inputs(t, 45)
        g = torch.zeros(3, t, 7)
        g[:, :45] = torch.randn(3, 45, 7, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            outs.append(model(video, mask, tokens, tmask, g if gaze != "none" else None))
    (l48, d48, m48), (l96, d96, m96) = outs
    sizes48, sizes96 = level_sizes(48, 4), level_sizes(96, 4)
    o48 = o96 = 0
    for s48, s96 in zip(sizes48, sizes96):
        valid = m48[0, o48:o48 + s48]
        assert torch.equal(valid, m96[0, o96:o96 + s48])
        torch.testing.assert_close(l48[:, o48:o48 + s48][:, valid],
                                   l96[:, o96:o96 + s48][:, valid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(d48[:, o48:o48 + s48][:, valid],
                                   d96[:, o96:o96 + s48][:, valid], atol=1e-5, rtol=1e-5)
        assert not m96[0, o96 + s48:o96 + s96].any()
        o48, o96 = o48 + s48, o96 + s96


def test_outputs_shapes_and_prior():
    model = GroundingModel(TINY).eval()
    video, mask, tokens, tmask = _inputs(64, 64)
    with torch.no_grad():
        logits, dists, pmask = model(video, mask, tokens, tmask)
    m = sum(level_sizes(64, TINY.levels))
    assert logits.shape == (3, m) and dists.shape == (3, m, 2) and pmask.shape == (3, m)
    assert (dists >= 0).all()
    # classification bias starts at -log(99): about 1 % probability everywhere
    assert float(torch.sigmoid(logits).mean()) == pytest.approx(0.01, abs=0.01)


def test_point_grid_and_assignment():
    cfg = replace(TINY, centre_radius=1.5)
    pts, strides, _lo, hi = point_grid(64, cfg)
    assert pts.shape == (64 + 32 + 16 + 8,) and strides[-1] == 8 and hi[-1] == float("inf")
    gt = torch.tensor([[10.0, 13.0], [20.0, 20.4], [2.0, 60.0]])
    pmask = torch.ones(3, len(pts), dtype=torch.bool)
    labels, reg = assign(gt, pmask, cfg)
    # query 0: level-0 points strictly inside the centre region, reach within [0, 4]
    lvl0 = labels[0, :64].nonzero().flatten().tolist()
    assert lvl0 == [11, 12]
    torch.testing.assert_close(reg[0, 11], torch.tensor([1.0, 2.0]))
    # query 1 is shorter than a step: no point inside, so the nearest fine point is used
    assert labels[1].nonzero().flatten().tolist() == [20]
    # query 2 is long: only the coarsest level (stride 8, reach > 16) takes it
    pos = labels[2].nonzero().flatten()
    assert len(pos) > 0 and (pos >= 64 + 32 + 16).all()
    torch.testing.assert_close(reg[2, pos[0]] * 8, torch.stack(
        [pts[pos[0]] - 2.0, 60.0 - pts[pos[0]]]))


def test_focal_and_diou_against_formulas():
    cfg = TINY
    logits = torch.tensor([[0.3, -1.0]])
    labels = torch.tensor([[1.0, 0.0]])
    got = focal_loss(logits, labels, torch.ones(1, 2), cfg)
    p = torch.sigmoid(logits)
    t = labels * 0.9 + 0.05
    ce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    pt = p * t + (1 - p) * (1 - t)
    want = ((0.25 * t + 0.75 * (1 - t)) * ce * (1 - pt) ** 2).sum()
    torch.testing.assert_close(got, want)
    same = torch.tensor([[1.0, 2.0]])
    assert diou_loss(same, same) == pytest.approx(0.0, abs=1e-6)
    # pred [t-1, t+1] vs target [t-1, t+3]: IoU 2/4, centre gap 1, span 4
    assert diou_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 3.0]])) == \
        pytest.approx(1 - 0.5 + (1 / 4) ** 2)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = GroundingModel(TINY)
    video, mask, tokens, tmask = _inputs(64, 60)
    gt = torch.tensor([[10.0, 14.0], [30.0, 41.0], [2.0, 5.0]])
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    norm = PositiveNormaliser(init=5.0)
    losses = []
    for _ in range(30):
        out = grounding_loss(*model(video, mask, tokens, tmask), gt, TINY, norm)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_saliency_term_joins_the_loss_only_when_weighted():
    torch.manual_seed(0)
    cfg = replace(TINY, saliency_weight=0.5)
    model = GroundingModel(cfg)
    video, mask, tokens, tmask = _inputs(64, 60)
    gt = torch.tensor([[10.0, 14.0], [30.0, 41.0], [2.0, 5.0]])
    v, _ = model.embed_video(video, mask)
    logits, dists, pmask, match = model.ground(v, None, mask, tokens, tmask, with_match=True)
    assert match.shape == (3, 64)
    plain = grounding_loss(logits, dists, pmask, gt, TINY, PositiveNormaliser(init=5.0))
    both = grounding_loss(logits, dists, pmask, gt, cfg, PositiveNormaliser(init=5.0),
                          match=match, step_mask=mask)
    torch.testing.assert_close(both["saliency"], saliency_loss(match, mask, gt))
    torch.testing.assert_close(both["loss"], plain["loss"] + 0.5 * both["saliency"])
    # without the flag ground() keeps the three outputs the exported graph has
    assert len(model.ground(v, None, mask, tokens, tmask)) == 3


def test_estimator_losses_and_tokens():
    cfg = GazeEstimatorConfig(in_dim=64, hidden=16, glu_layers=2, heads=2, embed_dim=8, grid=4)
    est = GazeEstimator(cfg)
    feats = torch.randn(2, 10, 64)
    maps = torch.rand(2, 10, 64, 64)
    maps /= maps.sum(dim=(2, 3), keepdim=True)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False
    out = est.loss(feats, maps, valid)
    assert torch.isfinite(out["loss"]) and out["kl"] >= 0
    mask = torch.ones(2, 10, dtype=torch.bool)
    for variant in ("gaze", "neg_gaze", "uniform_gaze"):
        tok = est.gaze_tokens(feats, mask, variant)
        assert tok.shape == (2, 10, est.token_dim) and est.token_dim == 8 + 4
    with pytest.raises(ValueError, match="unknown variant"):
        est.gaze_tokens(feats, mask, "sideways")
    # the control keeps the cells (their mean) and drops where the gaze falls: its map
    # embedding is the same whatever the features predict
    est.eval()
    uniform = est.gaze_tokens(feats, mask, "uniform_gaze")
    torch.testing.assert_close(uniform[..., 8:], feats.view(2, 10, 16, 4).mean(2))
    other = est.gaze_tokens(torch.randn(2, 10, 64), mask, "uniform_gaze")
    torch.testing.assert_close(uniform[..., :8], other[..., :8])
    assert not torch.allclose(est.gaze_tokens(feats, mask)[..., :8],
                              est.gaze_tokens(torch.randn(2, 10, 64), mask)[..., :8])
    pred = est.predict_maps(feats, mask)
    torch.testing.assert_close(pred.sum(dim=(2, 3)), torch.ones(2, 10))
    # the gaze-pooled cell features are a convex mix of the 16 cells
    tok = est.gaze_tokens(feats, mask)[..., 8:]
    cells = feats.view(2, 10, 16, 4)
    assert (tok <= cells.max(2).values + 1e-5).all() and (tok >= cells.min(2).values - 1e-5).all()


@pytest.mark.slow
def test_paper_preset_forward_backward_at_2560():
    cfg = PRESETS["paper"]
    est = GazeEstimator(cfg.estimator)
    model = GroundingModel(cfg.grounding, est.token_dim)
    n = sum(p.numel() for p in model.parameters())
    assert 30e6 < n < 45e6  # the anchor has about 32.5 M; GazeNLQ adds the gaze fusion
    video = torch.randn(1, 2560, cfg.grounding.video_dim)
    mask = torch.ones(1, 2560, dtype=torch.bool)
    gaze = est.gaze_tokens(torch.randn(1, 2560, cfg.estimator.in_dim), mask).detach()
    tokens, tmask = torch.randn(1, 12, 384), torch.ones(1, 12, dtype=torch.bool)
    logits, dists, pmask = model(video, mask, tokens, tmask, gaze)
    assert logits.shape == (1, sum(level_sizes(2560, 7)))
    out = grounding_loss(logits, dists, pmask, torch.tensor([[100.0, 108.0]]),
                         cfg.grounding, PositiveNormaliser())
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_heads_in_one_pass_equal_level_by_level():
    torch.manual_seed(3)
    model = GroundingModel(TINY).eval()
    masks = [torch.rand(2, 64 // 2**i) > 0.2 for i in range(TINY.levels)]
    # the heads take masked steps, as every block's output is
    feats = [torch.randn(2, 64 // 2**i, 16) * m.unsqueeze(-1) for i, m in enumerate(masks)]
    with torch.no_grad():
        logits, dists = model.heads(feats, masks)
        want_l = torch.cat([model.cls_head(f, m)[..., 0] for f, m in zip(feats, masks)], 1)
        want_d = torch.cat([torch.relu(model.reg_head(f, m) * model.scales[i])
                            for i, (f, m) in enumerate(zip(feats, masks))], 1)
    torch.testing.assert_close(logits, want_l, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dists, want_d, atol=1e-6, rtol=1e-5)


def test_ema_averages_float_state_and_adamw_decays_weights_only():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(net, decay=0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for k, v in ema.state_dict(net).items():
        if k.endswith("num_batches_tracked"):  # integer state is copied, not averaged
            assert torch.equal(v, net.state_dict()[k])
        else:
            torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * net.state_dict()[k])
    opt = optimizer(net, OptimConfig(weight_decay=0.05))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert opt.param_groups[0]["weight_decay"] == 0.05
    assert opt.param_groups[1]["weight_decay"] == 0.0
    assert decayed == {id(net[0].weight)}
