"""Training end to end on tiny EgoSim data: stages, checkpoints, exact resume, CLI."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gazenlq.nlq.annotations import load_queries
from gazenlq.synth.config import EgoSimConfig
from gazenlq.synth.dataset import generate
from gazenlq.timegrid import EGO4D
from gazenlq.training import checkpoint
from gazenlq.training.config import GazeEstimatorConfig, TrainConfig, preset
from gazenlq.training.data import GroundingDataset, clip_items
from gazenlq.training.estimator import GazeEstimator
from gazenlq.training.run import DataPaths, load_text, train
from tests.conftest import script


def tiny_config() -> TrainConfig:
    """The small preset shrunk, with early fusion: the paper preset's path, which the
    export and engine tests walk through; the small preset's own late fusion has
    tests/test_late_fusion.py (and the demo)."""
    cfg = preset("small")
    return replace(
        cfg,
        estimator=replace(cfg.estimator, hidden=16, glu_layers=1, heads=2, embed_dim=16),
        grounding=replace(cfg.grounding, hidden=16, heads=2, text_blocks=1, stem_blocks=1,
                          branch_blocks=2, mlp_ratio=1, fusion="early"),
        stage1=replace(cfg.stage1, epochs=1, batch_size=32),
        stage2=replace(cfg.stage2, epochs=2, warmup_epochs=1, batch_size=8),
        train_max_len=128)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_egosim")
    generate(EgoSimConfig(seed=21, sessions=8, gaze_fraction=1.0), out)
    return DataPaths.egosim(out)


@pytest.fixture(scope="module")
def text(tiny_data):
    tables = [load_queries(p) for p in (tiny_data.train, tiny_data.val, tiny_data.test)]
    return load_text(tiny_config(), tables)


def test_tiles_cover_every_answer_once_per_epoch(tiny_data, text):
    items = clip_items(load_queries(tiny_data.train), tiny_data.stores)
    ds = GroundingDataset(items, text.index, max_len=128, with_gaze=False, seed=0)
    fitting = sum(int(((it.answers[:, 1] - it.answers[:, 0]) <= 128).sum()) for it in items)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen = [ds[i] for i in range(len(ds))]
        for s in seen:
            assert ((s["answers"] >= 0) & (s["answers"] <= len(s["video"]))).all()
        # every answer that fits a window is in at least one window of the epoch
        assert sum(len(s["queries"]) for s in seen) >= 0.8 * fitting
    a = ds[3]
    np.testing.assert_array_equal(a["video"], ds[3]["video"])  # deterministic per epoch


def _weights(path):
    return load_file(path / "model.safetensors")


@pytest.fixture
def one_thread():
    """Bit-exact comparisons run on one thread: with several, MKL may split a GEMM
    differently from run to run when the machine is busy (MKL_DYNAMIC), which changes the
    last bits of sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_killed_run_resumes_to_identical_weights(tiny_data, text, tmp_path, one_thread):
    cfg = tiny_config()
    full = train(cfg, tiny_data, tmp_path / "full", variant="gaze", seed=3, text=text,
                 quiet=True)
    assert set(full) >= {"stage1", "val", "test", "parameters"}
    # the test predictions are a submission that scores as results.json says
    from gazenlq.nlq.evaluation import evaluate
    from gazenlq.nlq.submission import load_submission

    scored = evaluate(load_submission(tmp_path / "full" / "test_predictions.json"),
                      load_queries(tiny_data.test))
    assert scored.recall[(5, 0.3)] == pytest.approx(full["test"]["R5@0.3"])
    # kill after stage 2's first epoch: a finished stage 1 and an epoch-1 checkpoint remain
    from gazenlq.training import run as run_mod

    est = tmp_path / "full" / "stage1" / "best"
    cfg2 = run_mod.with_dims(cfg, video_dim=256, gaze_dim=512, text_dim=text.dim,
                             variant="gaze")
    cfg2 = replace(cfg2, stage1=replace(cfg2.stage1, seed=3), stage2=replace(cfg2.stage2,
                                                                             seed=3))
    tables = [load_queries(p) for p in (tiny_data.train, tiny_data.val)]
    run_mod.train_grounding(cfg2, tiny_data, tmp_path / "killed", resume=False, quiet=True,
                            text=text, train_table=tables[0], val_table=tables[1],
                            estimator_ckpt=est, stop_after_epoch=1)
    assert json.loads((tmp_path / "killed" / "stage2" / "last" / "state" /
                       "trainer.json").read_text())["epoch"] == 0
    run_mod.train_grounding(cfg2, tiny_data, tmp_path / "killed", resume=True, quiet=True,
                            text=text, train_table=tables[0], val_table=tables[1],
                            estimator_ckpt=est)
    a = _weights(tmp_path / "full" / "stage2" / "last")
    b = _weights(tmp_path / "killed" / "stage2" / "last")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ra = load_file(tmp_path / "full" / "stage2" / "last" / "state" / "raw.safetensors")
    rb = load_file(tmp_path / "killed" / "stage2" / "last" / "state" / "raw.safetensors")
    for k in ra:
        torch.testing.assert_close(ra[k], rb[k], rtol=0, atol=0, msg=k)


def test_checkpoint_is_self_describing(tiny_data, text, tmp_path):
    cfg = tiny_config()
    train(cfg, tiny_data, tmp_path / "r", variant="none", seed=0, text=text, quiet=True)
    conf = checkpoint.load_config(tmp_path / "r" / "stage2" / "best")
    restored = TrainConfig.from_dict(conf["train_config"])
    assert restored.grounding.gaze == "none" and restored.grounding.video_dim == 256
    for ckpt in ("best", "last"):  # the stores' time grid travels with the model
        assert checkpoint.time_grid(tmp_path / "r" / "stage2" / ckpt) == EGO4D
    assert restored.grounding.hidden == 16 and restored.train_max_len == 128
    hist = [json.loads(line) for line in
            (tmp_path / "r" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and "val_R1@0.3" in hist[0]
    assert hist[0]["device"] == "cpu" and hist[0]["precision"] == "float32"
    assert (tmp_path / "r" / "stage2" / "curves.png").stat().st_size > 1000
    files = {p.name for p in (tmp_path / "r" / "stage2" / "last").rglob("*")}
    assert not any(f.endswith((".pt", ".pkl", ".pth")) for f in files)
    (tmp_path / "r" / "stage2" / "best" / "config.json").write_text(
        json.dumps({**conf, "version": 99}))
    from gazenlq.errors import GazeNLQError

    with pytest.raises(GazeNLQError, match="newer"):
        checkpoint.load_config(tmp_path / "r" / "stage2" / "best")


@pytest.mark.slow
def test_cli_trains_a_table_and_writes_predictions(tiny_data, tmp_path):
    report = tmp_path / "results.md"
    out = subprocess.run([script("gaze-train"), str(tiny_data.stores.parent), "--out",
                          str(tmp_path / "runs"), "--variants", "none,gaze", "--seeds", "0",
                          "--epochs", "1", "--report", str(report), "--json", "--quiet",
                          "--jobs", "2"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert [r["variant"] for r in table["rows"]] == ["none", "gaze"]
    assert "R1@0.3" in table["prior_baseline"]
    assert "GazeNLQ" in report.read_text() and "--jobs 2" in report.read_text()
    # the report is publishable: placeholders, not this machine's paths
    assert str(tmp_path) not in report.read_text()
    assert "gaze-train DATA --out RUN" in report.read_text()
    assert table["data"] == str(tiny_data.stores.parent)
    # stage 1 ran once, in the gaze run's directory, and the gaze run used it
    assert (tmp_path / "runs" / "gaze-s0" / "stage1" / "best").is_dir()
    assert not (tmp_path / "runs" / "none-s0" / "stage1").exists()
    gaze = json.loads((tmp_path / "runs" / "gaze-s0" / "results.json").read_text())
    assert gaze["stage1"]["kl"] == table["rows"][1]["stage1"][0]["kl"]
    bad = subprocess.run([script("gaze-train"), str(tmp_path), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "missing" in bad.stderr


def test_table_plan_runs_stage1_once_per_seed_before_its_gaze_runs(tmp_path):
    from gazenlq.training.experiment import plan

    jobs = plan(["none", "gaze", "neg_gaze"], [0, 1], tmp_path)
    names = [j.name for j in jobs]
    assert sorted(names) == sorted(["stage1-s0", "stage1-s1", "none-s0", "gaze-s0",
                                    "neg_gaze-s0", "none-s1", "gaze-s1", "neg_gaze-s1"])
    assert names[:2] == ["stage1-s0", "stage1-s1"] and names[-2:] == ["none-s0", "none-s1"]
    by_name = {j.name: j for j in jobs}
    for seed in (0, 1):
        stage1 = by_name[f"stage1-s{seed}"]
        assert stage1.run_dir == tmp_path / f"gaze-s{seed}"
        for v in ("gaze", "neg_gaze"):
            job = by_name[f"{v}-s{seed}"]
            assert job.after == stage1.name
            assert job.estimator == stage1.run_dir / "stage1" / "best"
        assert by_name[f"none-s{seed}"].after is None
        assert by_name[f"none-s{seed}"].estimator is None
    assert [j.name for j in plan(["none"], [3], tmp_path)] == ["none-s3"]


def test_probe_true_gaze_names_the_handled_object_far_more_often_than_pooling(tiny_data):
    from tools.probe import identification_rates

    est = GazeEstimator(GazeEstimatorConfig(in_dim=512, hidden=16, glu_layers=1, heads=2,
                                            embed_dim=16)).eval()
    rates = identification_rates(tiny_data.stores.parent, est, split="train")
    assert rates["interactions"] > 50
    # EgoSim's premise: where the wearer looks tells which visible object is handled
    assert rates["true"] > rates["uniform"] + 0.3
    assert 0.0 <= rates["predicted"] <= 1.0


def test_roc_auc_known_values():
    from tools.probe import roc_auc

    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.arange(6.0), np.array([0, 0, 0, 1, 1, 1])) == 1.0
    assert roc_auc(-np.arange(6.0), np.array([0, 0, 0, 1, 1, 1])) == 0.0
    assert np.isnan(roc_auc(np.arange(3.0), np.zeros(3)))


def test_embedding_probe_sees_objects_the_nonlinear_embedding_blurs(tiny_data):
    from gazenlq.training.grounding import GroundingModel
    from tools.probe import concept_aucs

    small = preset("small").grounding
    aucs = {}
    for skip in (False, True):
        torch.manual_seed(0)
        model = GroundingModel(replace(small, video_dim=256, gaze="none", embed_skip=skip))
        aucs[skip] = concept_aucs(tiny_data.stores.parent, model.eval(), split="train")
    # EgoSim's features say linearly which objects a step shows and what is being done
    assert aucs[True]["raw"]["objects"] > 0.97 and aucs[True]["raw"]["verbs"] > 0.9
    assert aucs[True]["raw"] == aucs[False]["raw"]
    # GroundNLQ's [conv, LN, ReLU] x 2 embedding already blurs the objects at init; the
    # linear skip keeps them
    assert aucs[True]["embedding"]["objects"] > aucs[False]["embedding"]["objects"] + 0.05
    assert aucs[True]["embedding"]["objects"] > 0.95


def test_failure_types_of_exact_and_swapped_answers(tiny_data, tmp_path):
    from gazenlq.nlq.submission import Entry, write_submission
    from gazenlq.synth.dataset import plan_sessions, session_timeline
    from tools.probe import FAILURES, failure_types

    manifest = json.loads((tiny_data.stores.parent / "egosim.json").read_text())
    cfg = EgoSimConfig.from_dict(manifest["config"])
    events = {p.video_uid: session_timeline(cfg, p).events for p in plan_sessions(cfg)}
    queries = load_queries(tiny_data.train).with_text()

    def entry(q, window):
        return Entry(q.key.clip_uid, q.key.annotation_uid, q.key.query_idx, (window,))

    def elsewhere(q):
        """An interaction of the query's clip that misses its answer window (clip seconds)."""
        (c0, c1), (a0, a1) = q.clip_window, q.answer_video
        return next(((e.start_s - c0, e.end_s - c0) for e in events[q.video_uid]
                     if c0 <= e.start_s and e.end_s <= c1 and (e.end_s < a0 or e.start_s > a1)),
                    None)

    exact, swapped = tmp_path / "exact.json", tmp_path / "swapped.json"
    write_submission(exact, [entry(q, q.answer) for q in queries])
    # every query answered with another interaction of its clip
    write_submission(swapped, [entry(q, w) for q in queries if (w := elsewhere(q)) is not None])
    data = tiny_data.stores.parent
    assert failure_types(data, exact, split="train")["hit"] == 1.0
    shares = failure_types(data, swapped, split="train")
    assert shares["hit"] == 0.0 and shares["no interaction"] == 0.0
    assert sum(shares.values()) == pytest.approx(1.0) and set(shares) == set(FAILURES)


def test_gaze_token_cache_matches_the_estimator_and_is_reused(tiny_data, text, tmp_path):
    from gazenlq.training.gaze_cache import GazeTokens
    from gazenlq.training.grounding import GroundingModel
    from gazenlq.training.infer import clip_inputs, predict
    from gazenlq.training.model import with_dims

    cfg = with_dims(tiny_config(), video_dim=256, gaze_dim=512, text_dim=text.dim,
                    variant="gaze")
    torch.manual_seed(0)
    est = GazeEstimator(cfg.estimator).eval()
    items = clip_items(load_queries(tiny_data.val), tiny_data.stores)
    path = tmp_path / "tokens.zarr"
    cache = GazeTokens.build(path, est, items, variant="gaze", multiple=4, quiet=True)
    for item in items:  # whole-clip tokens, exactly as inference computes them
        _, _, want = clip_inputs(item, 4, est, "gaze")
        np.testing.assert_array_equal(cache.read(item.clip_uid), want[0, :item.length].numpy())
        np.testing.assert_array_equal(cache.read(item.clip_uid, 5, 20),
                                      want[0, 5:20].numpy())
    stamp = (path / "zarr.json").stat().st_mtime_ns
    assert GazeTokens.build(path, est, items, variant="gaze", multiple=4, quiet=True
                            ).fingerprint == cache.fingerprint
    assert (path / "zarr.json").stat().st_mtime_ns == stamp  # reused, not recomputed
    neg = GazeTokens.build(path, est, items, variant="neg_gaze", multiple=4, quiet=True)
    assert neg.fingerprint != cache.fingerprint  # another variant: rebuilt
    _, _, inverted = clip_inputs(items[0], 4, est, "neg_gaze")
    np.testing.assert_array_equal(neg.read(items[0].clip_uid),
                                  inverted[0, :items[0].length].numpy())
    # validation through the cache gives the same predictions as running the estimator
    model = GroundingModel(cfg.grounding, est.token_dim).eval()
    cache = GazeTokens.build(path, est, items, variant="gaze", multiple=4, quiet=True)
    assert predict(model, est, items, text) == predict(model, est, items, text,
                                                       gaze_tokens=cache)
