"""Semantic gaze targets: the looked-at file and step labels, the head's InfoNCE targets,
span merging, export parity of the new outputs and ``gaze-search --looked-at`` end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gazenlq.engine.looked_at import classes_for, stitch
from gazenlq.errors import GazeNLQError
from gazenlq.gaze.looked_at import (
    MIN_COVER,
    accuracy_at,
    label_probs,
    ranked_spans,
    read_looked_at,
    recall_at,
    runs,
    step_labels,
    write_looked_at,
)
from gazenlq.timegrid import EGO4D
from gazenlq.training.semantic import SemanticHead, batch_targets, semantic_loss
from tests.conftest import script


@given(st.lists(st.integers(-1, 7), min_size=1, max_size=40))
def test_infonce_targets_name_each_labelled_steps_object(labels):
    t = torch.tensor(labels).reshape(1, -1)
    keep, classes, target = batch_targets(t)
    assert keep.tolist() == [[x >= 0 for x in labels]]
    assert classes.tolist() == sorted({x for x in labels if x >= 0})
    assert classes[target].tolist() == [x for x in labels if x >= 0]


def test_semantic_loss_learns_on_detached_inputs_and_ignores_unlabelled_steps():
    from gazenlq.training.config import SemanticConfig

    torch.manual_seed(0)
    head = SemanticHead(SemanticConfig(hidden=16), in_dim=8, text_dim=4)
    video = torch.randn(2, 6, 8, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    nouns = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    labels = torch.tensor([[0, 0, -1, 3, 3, 4], [1, -1, -1, -1, 2, 2]])
    loss = semantic_loss(head, video, None, mask, labels, nouns)
    loss.backward()
    assert video.grad is None and head.log_scale.grad is not None
    # a labelled step made unlabelled by the mask is not trained on
    none = semantic_loss(head, video, None, torch.zeros_like(mask), labels, nouns)
    assert float(none.detach()) == 0.0
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        semantic_loss(head, video, None, mask, labels, nouns).backward()
        opt.step()
    after = semantic_loss(head, video, None, mask, labels, nouns).detach()
    assert float(after) < float(loss.detach()) / 4


def test_semantic_head_leaves_the_grounding_model_bit_identical():
    from gazenlq.training.model import GazeNLQ
    from tests.test_training_run import tiny_config

    cfg = replace(tiny_config(), grounding=replace(tiny_config().grounding, video_dim=8,
                                                   text_dim=12, gaze="none"))
    torch.manual_seed(0)
    plain = GazeNLQ(cfg)
    torch.manual_seed(0)
    with_head = GazeNLQ(replace(cfg, semantic=replace(cfg.semantic, enabled=True)))
    assert with_head.semantic is not None and plain.semantic is None
    ref = plain.state_dict()
    for k, v in with_head.state_dict().items():
        assert k.startswith("semantic.") or torch.equal(v, ref[k]), k
    groups = with_head.clip_groups()
    assert [id(p) for p in groups[-1]] == [id(p) for p in with_head.semantic.parameters()]


@settings(max_examples=200)
@given(st.lists(st.floats(0, 1), min_size=0, max_size=60), st.floats(0.05, 1))
def test_ranked_spans_are_the_maximal_runs_above_threshold(prob, threshold):
    prob = np.array(prob)
    found = ranked_spans(prob, threshold)
    covered = np.zeros(len(prob), bool)
    for (s, e), score in found:
        assert 0 <= s < e <= len(prob) and not covered[s:e].any()
        covered[s:e] = True
        assert (prob[s:e] >= threshold).all()  # every step of a span is a hit ...
        assert s == 0 or prob[s - 1] < threshold  # ... and the span cannot grow
        assert e == len(prob) or prob[e] < threshold
        assert score == pytest.approx(prob[s:e].mean())
    assert (covered == (prob >= threshold)).all()
    scores = [sc for _, sc in found]
    assert scores == sorted(scores, reverse=True)
    assert runs(np.zeros(0, bool)).shape == (0, 2)


def test_step_labels_follow_the_fixated_share_of_each_window(tmp_path):
    grid = EGO4D
    w = grid.window / grid.fps
    spans = np.array([[0.0, 3.0, 2], [3.0, 3.2, 1], [3.2, 6.0, 0]])
    labels = step_labels(spans, grid, 10, 3)
    for i, lab in enumerate(labels):
        a, b = grid.step_bounds_s(i)
        cover = [sum(max(0.0, min(b, e) - max(a, s)) for s, e, o in spans if o == k)
                 for k in range(3)]
        best = int(np.argmax(cover))
        assert lab == (best if cover[best] >= MIN_COVER * w else -1)
    assert labels[0] == 2 and labels[-1] == 0 and 1 not in labels
    # the file round trip keeps the spans and names; a broken file is one line
    write_looked_at(tmp_path / "l.json", ["mug", "bulb", "knife"], {"v1": spans})
    back = read_looked_at(tmp_path / "l.json")
    assert back.objects == ("mug", "bulb", "knife")
    assert np.allclose(back.spans("v1"), spans) and back.spans("v2").shape == (0, 3)
    (tmp_path / "bad.json").write_text(json.dumps(
        {"format": "gazenlq.looked-at", "version": 1, "videos": [
            {"video_uid": "v", "fixations": [[2.0, 1.0, "mug"]]}]}))
    with pytest.raises(GazeNLQError, match=r"bad\.json: video v: fixation"):
        read_looked_at(tmp_path / "bad.json")


@given(st.integers(1, 90), st.integers(4, 32), st.integers(0, 3))
def test_stitching_windows_of_one_array_gives_the_array(steps, length, overlap):
    from gazenlq.store import plan_windows

    overlap = min(overlap, length - 1)
    full = np.random.default_rng(steps).standard_normal((steps, 3)).astype(np.float32)
    wins = plan_windows(steps, min(length, steps), min(overlap, max(0, min(length, steps) - 1)))
    got = stitch(((a, b - a, full[a:b]) for a, b in wins), steps, 3)
    assert np.array_equal(got, full)


def test_a_noun_competes_with_the_vocabulary_but_not_with_itself():
    rng = np.random.default_rng(0)
    vocab = rng.standard_normal((5, 8))
    vocab /= np.linalg.norm(vocab, axis=1, keepdims=True)
    classes = classes_for(vocab[2], vocab)
    assert len(classes) == 5 and np.allclose(classes[0], vocab[2])
    p = label_probs(np.vstack([vocab[2], np.zeros(8)]), classes, 20.0)
    assert p[0, 0] > 0.9 and not p[1].any()  # a padded (zero) step looks at nothing
    assert accuracy_at(np.eye(3), np.array([0, 1, 1]), 1) == pytest.approx(200 / 3)
    assert recall_at([[0, 1], [5, 9]], [[5, 8]], 2, 0.3) and not recall_at(
        [[0, 1], [5, 9]], [[5, 8]], 1, 0.3)


def test_egosim_fixation_spans_land_on_visible_objects(egosim_small):
    from gazenlq.synth.dataset import plan_sessions, session_timeline
    from gazenlq.synth.timeline import looked_at_spans

    cfg, out, manifest = egosim_small
    looked = read_looked_at(out / "annotations" / "looked_at.json")
    assert {s["video_uid"] for s in manifest["sessions"]} == set(looked.videos)
    plan = plan_sessions(cfg)[0]
    tl = session_timeline(cfg, plan)
    spans = np.array(looked_at_spans(tl))
    assert np.allclose(looked.spans(plan.video_uid), spans, atol=1e-4)
    assert (spans[1:, 0] >= spans[:-1, 1] - 1e-9).all()
    same = (spans[1:, 2] == spans[:-1, 2]) & np.isclose(spans[1:, 0], spans[:-1, 1])
    assert not same.any()  # consecutive fixations on one object are merged
    for s, _, o in spans:
        assert int(o) in tl.scene_objects[tl.scene_at(s + 1e-6)]


# -- trained, exported and searched -------------------------------------------------------

@pytest.fixture(scope="module", params=["early", "late"])
def semantic_bundle(egosim_small, tmp_path_factory, request):
    """A tiny no-gaze model with a looked-at head, trained on the small EgoSim world for one
    epoch and exported, with either fusion (late: the small preset's): ``(data, bundle,
    export report)``."""
    from gazenlq.export.exporter import export_bundle
    from gazenlq.training.run import DataPaths, train
    from tests.test_training_run import tiny_config

    _, out, _ = egosim_small
    data = DataPaths.egosim(out)
    cfg = tiny_config()
    cfg = replace(cfg, semantic=replace(cfg.semantic, enabled=True, hidden=16),
                  stage2=replace(cfg.stage2, epochs=1),
                  grounding=replace(cfg.grounding, fusion=request.param))
    run = tmp_path_factory.mktemp("semantic") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg, data, run, variant="none", seed=0, quiet=True)
    finally:
        torch.set_num_threads(threads)
    bundle = run.parent / "bundle"
    report = export_bundle(run / "stage2" / "best", bundle, threads=1)
    return data, bundle, report


def test_export_validates_the_new_outputs(semantic_bundle):
    from gazenlq.bundle.manifest import read_manifest

    _, bundle, report = semantic_bundle
    rows = [r for r in report.parity if r.output in ("looked_at_emb", "noun_emb")]
    assert {(r.graph, r.output) for r in rows} == {("video", "looked_at_emb"),
                                                    ("text", "noun_emb")}
    assert len(rows) >= 6 and all(r.ok and r.max_abs_diff <= 1e-4 for r in rows)
    m = read_manifest(bundle)
    assert m.looked_at["objects"][:2] == ["bulb", "extension cord"]
    assert m.looked_at["dim"] == 384 and m.looked_at["scale"] > 0


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([script("gaze-search"), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_search_looked_at_end_to_end(semantic_bundle, tmp_path):
    from gazenlq.engine import SearchEngine

    data, bundle, _ = semantic_bundle
    cache = tmp_path / "cache"
    out = _cli(data.stores, "--looked-at", "bulb", "--looked-at", "the knife", "--bundle",
               bundle, "--looked-at-threshold", "0.02", "--top-k", "4", "--json",
               "--cache-dir", cache)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [r["query"] for r in doc["looked_at"]] == ["bulb", "the knife"]  # first: no index
    engine = SearchEngine.from_bundle(bundle, cache_dir=str(cache))
    api = engine.looked_at(data.stores, ["bulb", "the knife"], top_k=4, threshold=0.02,
                           timeline=True)
    for got, want in zip(doc["looked_at"], api):
        assert [m["score"] for m in got["moments"]] == pytest.approx(
            [m.score for m in want.moments])
        assert 0 < len(want.moments) <= 4
        for m in want.moments:  # a moment is a run of steps; its score their mean
            line = want.timelines[m.video]
            inside = (line.seconds >= m.start_s - 1e-6) & (line.seconds <= m.end_s + 1e-6)
            assert line.score[inside].mean() == pytest.approx(m.score, abs=1e-5)
            assert (line.score[inside] >= 0.02).all()
    assert api.timings.cached_windows > 0  # the CLI's search indexed the library
    # a text query and the looked-at track in one plot; the text search still works
    plot = _cli(data.stores, "where did I put the knife", "--looked-at", "knife", "--bundle",
                bundle, "--plot", tmp_path / "t.png", "--cache-dir", cache)
    assert plot.returncode == 0, plot.stderr
    assert "looked at 'knife'" in plot.stdout and (tmp_path / "t.png").stat().st_size > 5000


def test_bundle_without_head_is_one_line(semantic_bundle, tmp_path):
    data, bundle, _ = semantic_bundle
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["looked_at"] = None  # a bundle exported before the head existed
    (old / "manifest.json").write_text(json.dumps(manifest))
    out = _cli(data.stores, "--looked-at", "bulb", "--bundle", old)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "has no looked-at head" in out.stderr, out.stderr


def _feed_models():
    """A tiny GazeNLQ with a semantic head, without and with the looked-at feed, from the
    same seed."""
    from gazenlq.training.model import GazeNLQ
    from tests.test_training_run import tiny_config

    cfg = tiny_config()
    cfg = replace(cfg, grounding=replace(cfg.grounding, video_dim=8, text_dim=12, gaze="gaze"),
                  estimator=replace(cfg.estimator, in_dim=32, grid=4),
                  semantic=replace(cfg.semantic, enabled=True, hidden=8))
    torch.manual_seed(0)
    plain = GazeNLQ(cfg)
    torch.manual_seed(0)
    fed = GazeNLQ(replace(cfg, grounding=replace(cfg.grounding, looked_at_feed=True)))
    return plain, fed


def test_looked_at_feed_starts_as_the_plain_model_and_reads_the_track():
    plain, fed = _feed_models()
    ref = plain.state_dict()
    new = {k for k in fed.state_dict() if k not in ref}
    assert new == {"grounding.looked_embed.weight", "grounding.looked_embed.bias",
                   "grounding.gate.looked_proj.weight", "grounding.gate.looked_proj.bias"}
    for k, v in ref.items():  # the other weights are drawn exactly as without the feed
        assert torch.equal(fed.state_dict()[k], v), k
    plain.eval()
    fed.eval()
    torch.manual_seed(1)
    video, gaze = torch.randn(2, 16, 8), torch.randn(2, 16, 32)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[1, 12:] = False
    tokens, tmask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    tok = fed.gaze_tokens(gaze, mask)
    v, g = fed.grounding.embed_video(video, mask, tok)
    looked = fed.looked_track(v, tok, mask)
    assert looked.shape == (2, 16, 12) and not looked.requires_grad
    out = fed.grounding.ground(v, g, mask, tokens, tmask, looked=looked)
    ref_out = plain.grounding.ground(v, g, mask, tokens, tmask)
    for a, b in zip(out, ref_out):  # the gate's new map starts at zero: the identity
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="looked"):
        fed.grounding.ground(v, g, mask, tokens, tmask)
    with torch.no_grad():
        fed.grounding.gate.looked_proj.weight.normal_()
    a = fed.grounding.ground(v, g, mask, tokens, tmask, looked=looked)[0]
    b = fed.grounding.ground(v, g, mask, tokens, tmask, looked=looked.flip(1))[0]
    assert not torch.allclose(a, b)  # the track now steers the scores


def test_looked_at_feed_trains_the_grounding_model_not_the_head():
    _, fed = _feed_models()
    fed.train()
    video, gaze = torch.randn(2, 16, 8), torch.randn(2, 16, 32)
    mask = torch.ones(2, 16, dtype=torch.bool)
    tokens, tmask = torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        fed.grounding.gate.looked_proj.weight.normal_()
    tok = fed.gaze_tokens(gaze, mask)
    v, g = fed.grounding.embed_video(video, mask, tok)
    logits = fed.grounding.ground(v, g, mask, tokens, tmask,
                                  looked=fed.looked_track(v, tok, mask))[0]
    logits.sum().backward()
    assert fed.grounding.looked_embed.weight.grad is not None
    assert all(p.grad is None for p in fed.semantic.parameters())


def test_looked_at_feed_needs_the_head_and_is_not_exported(tmp_path):
    from benchmarks.models import random_checkpoint
    from gazenlq.export.exporter import export_bundle
    from gazenlq.training.model import GazeNLQ

    _, fed = _feed_models()
    with pytest.raises(GazeNLQError, match="--looked-at"):
        GazeNLQ(replace(fed.cfg, semantic=replace(fed.cfg.semantic, enabled=False)))
    ckpt = random_checkpoint(fed.cfg, tmp_path / "ckpt", grid=EGO4D)
    with pytest.raises(GazeNLQError, match="feeds the looked-at track"):
        export_bundle(ckpt, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    r = subprocess.run([script("gaze-train"), str(tmp_path), "--out", str(tmp_path / "run"),
                        "--feed-looked-at"], capture_output=True, text=True)
    assert r.returncode == 2 and "--feed-looked-at" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
