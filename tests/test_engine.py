"""gaze-search: parity with PyTorch, caches, collections, long videos, no torch, bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gazenlq.engine import SearchEngine, SearchOptions, Timings
from gazenlq.errors import ParameterError
from gazenlq.nlq.annotations import load_queries
from tests.conftest import reexported_copy, script


def _stores(data) -> list[Path]:
    return sorted(data.stores.glob("*.zarr"))


def _fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    return dst


def test_engine_top5_equals_pytorch_on_every_val_query(tiny_trained, tiny_bundle):
    """Same top-5 scores (to 1e-4) and, wherever the scores are not near-ties, the same
    windows (to 0.03 steps): the engine's search of each clip against PyTorch inference."""
    import torch

    from gazenlq.bundle import level_sizes
    from gazenlq.kernels import postprocess_query
    from gazenlq.text import build_text_encoder, load_tokenizer
    from gazenlq.training import checkpoint
    from gazenlq.training.config import TrainConfig
    from gazenlq.training.data import TextFeatures, clip_items
    from gazenlq.training.infer import clip_inputs
    from gazenlq.training.model import GazeNLQ

    data, ckpt = tiny_trained
    cfg = TrainConfig.from_dict(checkpoint.load_config(ckpt)["train_config"])
    model = GazeNLQ(cfg).eval()
    model.load_state_dict(checkpoint.load_weights(ckpt))
    engine = SearchEngine(tiny_bundle)
    g = cfg.grounding
    checked = 0
    for split in (data.val, data.test):
        items = clip_items(load_queries(split), data.stores)
        texts = [q.text for it in items for q in it.queries]
        text = TextFeatures(texts, build_text_encoder(cfg.text), load_tokenizer(cfg.text))
        for item in items:
            video, mask, gaze = clip_inputs(item, g.length_multiple, model.estimator, g.gaze)
            tokens, tmask = text.batch([text.index[q.text] for q in item.queries])
            n = len(item.queries)
            with torch.no_grad():
                v, ge = model.grounding.embed_video(video, mask, gaze)
                logits, dists, pmask = model.grounding.ground(
                    v.expand(n, -1, -1), ge.expand(n, -1, -1), mask.expand(n, -1), tokens,
                    tmask)
            logits = logits.masked_fill(~pmask, float("-inf")).numpy()
            enc = engine._encode([q.text for q in item.queries], Timings())
            plan = engine._plan(item.store, item.span.first, item.span.stop)
            scan = engine._scan(plan, enc.tokens, enc.mask, Timings(), top_k=5)
            for qi in range(n):
                ref = postprocess_query(logits[qi], dists[qi].numpy(),
                                        level_sizes(video.shape[1], g.levels), g.strides)
                segs = np.array([s for s, _ in scan.moments[qi]])
                scores = np.array([sc for _, sc in scan.moments[qi]])
                np.testing.assert_allclose(scores, ref.scores, atol=1e-4)
                gaps = np.abs(np.diff(ref.scores))
                distinct = np.ones(len(scores), bool)
                distinct[:-1] &= gaps > 1e-4
                distinct[1:] &= gaps > 1e-4
                np.testing.assert_allclose(segs[distinct], ref.segments[distinct], atol=0.03)
                checked += 1
    assert checked > 10


def test_second_search_uses_the_cache_and_a_stale_cache_is_rebuilt(tiny_trained, tiny_bundle,
                                                                  tmp_path):
    data, _ = tiny_trained
    store = _fresh_copy(_stores(data)[0], tmp_path / "v.zarr")
    engine = SearchEngine(tiny_bundle)
    a = engine.search(store, ["where did I put the knife"])
    assert a.timings.video_model > 0 and a.timings.cached_windows == 0
    b = SearchEngine(tiny_bundle).search(store, ["where did I put the knife"])
    assert b.timings.video_model == 0  # each result carries its own call's timings
    assert b.timings.cached_windows == b.timings.windows > 0
    assert engine.search(store, "where did I put the knife").timings.video_model == 0
    assert [m.__dict__ for m in a[0].moments] == [m.__dict__ for m in b[0].moments]
    # another bundle (the same graphs under another sha256) must not read this cache, and
    # replaces it
    other = reexported_copy(tiny_bundle, tmp_path / "other_bundle")
    old = {p.name for p in (store / "cache").iterdir() if p.is_dir()}
    c = SearchEngine(other).search([store], ["where did I put the knife"])
    assert c.timings.video_model > 0 and c.timings.cached_windows == 0
    assert [m.__dict__ for m in c[0].moments] == [m.__dict__ for m in a[0].moments]
    new = {p.name for p in (store / "cache").iterdir() if p.is_dir()}
    assert len(new) == 1 and new != old  # the stale cache of the same plan was replaced


def test_texts_run_sorted_in_buckets_each_as_if_alone(tiny_bundle):
    """A file of questions runs through the text graph sorted by length, TEXT_ROWS per call,
    each call padded to its own longest: every question's features (on its tokens; zero on
    the padding) and query embedding equal those of the question run alone, unpadded."""
    from gazenlq.engine.runtime import TEXT_ROWS, Runtime

    rng = np.random.default_rng(0)
    words = np.array(["where", "did", "i", "put", "the", "red", "knife", "after", "cutting"])
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 14))))
             for _ in range(2 * TEXT_ROWS + 9)]
    runtime = Runtime(tiny_bundle)
    features, mask, emb = runtime.text(texts)
    assert features.shape[:2] == mask.shape and mask.shape[0] == len(texts)
    assert mask.sum(1).min() < mask.shape[1]  # padding to check, across several calls
    session, spec = runtime.sessions["text"], runtime.specs["text"]
    names = [t.name for t in spec.outputs]
    for i, text in enumerate(texts):
        tok = runtime.tokenizer([text])
        alone = dict(zip(names, session.run(names, {"input_ids": tok.input_ids,
                                                    "attention_mask": tok.attention_mask})))
        n = tok.input_ids.shape[1]
        assert mask[i].sum() == n and mask[i, :n].all()
        np.testing.assert_allclose(features[i, :n], alone["features"][0], rtol=0, atol=1e-5)
        assert not features[i, n:].any()
        if emb is not None:
            np.testing.assert_allclose(emb[i], alone["query_emb"][0], rtol=0, atol=1e-5)


def test_collection_ranks_across_videos_and_windows_cover_long_videos(tiny_trained,
                                                                     tiny_bundle):
    data, _ = tiny_trained
    stores = _stores(data)
    engine = SearchEngine(tiny_bundle, options=SearchOptions(top_k=7, window=256, overlap=64,
                                                             use_cache=False,
                                                             write_cache=False))
    found = engine.search(data.stores, ["what did I put in the box"])
    assert found.stores == stores
    [res] = found
    assert len(res.moments) == 7
    scores = [m.score for m in res.moments]
    assert scores == sorted(scores, reverse=True)
    from gazenlq.store import FeatureStore

    durations = {FeatureStore.open(p).info.video_uid: FeatureStore.open(p).info.duration_s
                 for p in stores}
    for m in res.moments:
        assert m.video in durations and 0 <= m.start_s <= m.end_s <= durations[m.video]
    assert found.timings.windows > len(stores)  # several windows per video


def test_search_imports_no_torch(tiny_trained, tiny_bundle):
    data, _ = tiny_trained
    code = textwrap.dedent(f"""
        import sys
        from gazenlq.cli.search import main
        try:
            main([{str(_stores(data)[0])!r}, "where did I put the knife", "--bundle",
                  {str(tiny_bundle)!r}, "--json", "--no-cache"])
        except SystemExit as e:
            assert not e.code, e.code
        from gazenlq import SearchEngine
        result = SearchEngine.from_bundle({str(tiny_bundle)!r}, use_cache=False).search(
            {str(_stores(data)[0])!r}, "where did I put the knife")
        assert result[0].moments
        bad = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not bad, bad[:5]
        print("NO_TORCH")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "NO_TORCH" in out.stdout, out.stderr[-2000:]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([script("gaze-search"), *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_cli_table_json_plot_explain_and_submission(tiny_trained, tiny_bundle, tmp_path):
    data, _ = tiny_trained
    store = _stores(data)[0]
    out = _cli(store, "where did I put the knife", "--bundle", tiny_bundle, "--explain",
               "--plot", tmp_path / "t.png")
    assert out.returncode == 0, out.stderr
    assert "rank" in out.stdout and "ground_model" in out.stdout
    assert (tmp_path / "t.png").stat().st_size > 5000
    js = _cli(store, "where did I put the knife", "which tool did I use", "--bundle",
              tiny_bundle, "--json", "--top-k", "3")
    doc = json.loads(js.stdout)
    assert [len(r["moments"]) for r in doc["results"]] == [3, 3]
    sub = tmp_path / "sub.json"
    nlq = _cli(data.stores, "--queries", data.val, "--bundle", tiny_bundle, "--submission",
               sub, "--quiet", "--plot", tmp_path / "gt.png")
    assert nlq.returncode == 0, nlq.stderr
    assert (tmp_path / "gt.png").stat().st_size > 5000
    ev = subprocess.run([script("gaze-eval"), sub, data.val, "--json"], capture_output=True,
                        text=True)
    assert ev.returncode == 0 and "R1@0.3" in ev.stdout


def _one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert needle in out.stderr, out.stderr


def test_bad_input_is_one_line_and_writes_nothing(tiny_trained, tiny_bundle, tmp_path):
    data, _ = tiny_trained
    store = _fresh_copy(_stores(data)[0], tmp_path / "v.zarr")
    q = "where did I put the knife"
    _one_line_error(_cli(tmp_path / "nope.zarr", q, "--bundle", tiny_bundle),
                    "no such feature store")
    (tmp_path / "plain").mkdir()
    _one_line_error(_cli(tmp_path / "plain", q, "--bundle", tiny_bundle), "no feature stores")
    _one_line_error(_cli(store, "  ", "--bundle", tiny_bundle), "empty query")
    # a store of another schema version
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 2
    (store / "zarr.json").write_text(json.dumps(meta))
    _one_line_error(_cli(store, q, "--bundle", tiny_bundle), "schema version 2 is newer")
    meta["attributes"]["schema_version"] = 1
    (store / "zarr.json").write_text(json.dumps(meta))
    # a corrupted chunk
    (store / "video_features" / "c" / "0" / "0").write_bytes(b"garbage")
    _one_line_error(_cli(store, q, "--bundle", tiny_bundle), "cannot be read")
    assert not (store / "cache").exists()
    assert not list(store.glob(".cache-tmp-*"))
    # features whose width does not match the bundle
    import zarr

    narrow = tmp_path / "narrow.zarr"
    from gazenlq.store import StoreWriter

    with StoreWriter(narrow, video_uid="n", video_dim=8, gaze_dim=512) as w:
        w.append(np.zeros((100, 8)), np.zeros((100, 512)))
    _one_line_error(_cli(narrow, q, "--bundle", tiny_bundle), "the bundle expects 256")
    assert zarr.open_group(narrow).attrs["complete"]
    # a bundle with a bad hash
    bad = tmp_path / "bad_bundle"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "ground.onnx", "ab") as f:
        f.write(b"\0")
    _one_line_error(_cli(_stores(data)[0], q, "--bundle", bad), "sha256 does not match")


@pytest.mark.slow
def test_concurrent_searches_while_the_cache_is_built(tiny_trained, tiny_bundle, tmp_path):
    data, _ = tiny_trained
    store = _fresh_copy(_stores(data)[0], tmp_path / "v.zarr")
    q = "where did I put the knife"
    want = json.loads(_cli(store, q, "--bundle", tiny_bundle, "--json", "--no-cache").stdout)
    procs = [subprocess.Popen([script("gaze-search"), str(store), q, "--bundle",
                               str(tiny_bundle), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for (stdout, stderr), p in zip(outs, procs):
        assert p.returncode == 0, stderr
        assert json.loads(stdout)["results"] == want["results"]
    entries = [p for p in (store / "cache").iterdir() if not p.name.startswith(".")]
    assert len([e for e in entries if e.is_dir()]) == 1
    assert not list(store.glob(".cache-tmp-*"))


def test_devices_that_are_not_here_fail_in_one_line(tiny_trained, tiny_bundle):
    data, _ = tiny_trained
    for device, needle in (("cuda", "CUDAExecutionProvider"),
                           ("trt-native", "tensorrt" if importlib.util.find_spec("tensorrt")
                            is None else "engine")):
        out = _cli(_stores(data)[0], "where did I put the knife", "--bundle", tiny_bundle,
                   "--device", device)
        _one_line_error(out, needle)


@pytest.mark.gpu
def test_native_tensorrt_engines_match_onnxruntime(tiny_trained, tiny_bundle, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install 'gazenlq[trt]' on a GPU machine)")
    from gazenlq.bundle.trt import gpu_compute_capability
    from gazenlq.export.tensorrt import TrtOptions, build_engines

    if gpu_compute_capability() is None:
        pytest.skip("no NVIDIA GPU (nvidia-smi found none)")
    from gazenlq.engine import RuntimeOptions

    data, _ = tiny_trained
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    build_engines(bundle, TrtOptions(max_length=2560, opt_length=512, max_batch=4))
    store = _stores(data)[0]
    # more queries than the engines' max batch: the text call is split to the profile
    queries = ["where did I put the knife", "what did I cut", "where is the cup",
               "which drawer did I open", "who was there", "where was the pan",
               "what did I wash", "where is the kettle", "what did I drink"]
    opts = SearchOptions(use_cache=False, write_cache=False)
    cpu = SearchEngine(bundle, options=opts).search(store, queries)
    native = SearchEngine(bundle, RuntimeOptions("trt-native"), opts)
    gpu = native.search(store, queries)
    assert native.runtime.providers["text"] == ["TensorRT (native engine)"]
    for g, c in zip(gpu, cpu):
        np.testing.assert_allclose([m.score for m in g.moments],
                                   [m.score for m in c.moments], atol=1e-3)
    native.runtime.close()
    with pytest.raises(ParameterError, match="window=5120: the fp32 TensorRT engines accept "
                       "at most 2560 steps"):
        SearchEngine(bundle, RuntimeOptions("trt-native"),
                     SearchOptions(window=5120, use_cache=False))
