"""gaze-export: a trained tiny checkpoint -> validated bundle -> verify -> parity, refusals."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import warnings
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from gazenlq.bundle.manifest import MANIFEST, VERSION, TensorSpec, verify_bundle
from gazenlq.bundle.trt import (
    check_engine_sidecar,
    engine_source,
    gpu_compute_capability,
    read_sidecar,
)
from gazenlq.export.exporter import check_bundle, export_bundle
from gazenlq.export.onnx_export import io_problems
from gazenlq.export.tensorrt import TrtOptions, build_engines
from gazenlq.export.validate import ort_session
from gazenlq.kernels import PostprocessConfig
from gazenlq.nlq.annotations import load_queries
from gazenlq.timegrid import EGO4D
from gazenlq.training import checkpoint
from gazenlq.training.model import GazeNLQ, with_dims
from gazenlq.training.run import DataPaths
from tests.conftest import script
from tests.test_training_run import tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # modest CPU in the exporting subprocesses


@pytest.fixture(scope="module")
def trained(tiny_trained) -> tuple[DataPaths, Path]:
    """Tiny EgoSim data and a tiny GazeNLQ ('gaze') trained on it (conftest)."""
    return tiny_trained


def _export(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([script("gaze-export"), *map(str, args)], capture_output=True,
                          text=True, timeout=900, env=ENV)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, dict]:
    """The bundle (+ fp16) exported by the CLI, validated on the val queries; its report."""
    data, ckpt = trained
    bundle = tmp_path_factory.mktemp("export_bundle") / "bundle"
    out = _export(ckpt, "-o", bundle, "--fp16", "--queries", data.val, "--stores",
                  data.stores, "--threads", "1", "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    return bundle, json.loads(out.stdout)


def test_export_validates_at_three_lengths_and_agrees_end_to_end(trained, exported):
    data, _ = trained
    bundle, report = exported
    sizes = defaultdict(list)
    for row in report["parity"]:
        assert row["ok"] and row["max_abs_diff"] <= 1e-4, row
        sizes[row["graph"], row["output"]].append(row["size"])
    assert set(sizes) == {("text", "features"), ("text", "query_emb"), ("video", "video_emb"),
                          ("video", "gaze_emb"), ("video", "coarse_emb"), ("ground", "logits"),
                          ("ground", "distances"), ("ground", "point_mask")}
    assert all(len(set(s)) == 3 for s in sizes.values())  # three lengths each
    val_queries = len(load_queries(data.val).with_text())
    assert report["queries_from"] == "given clips"
    fp32, fp16 = report["agreement"]["fp32"], report["agreement"]["fp16"]
    assert fp32["queries"] == fp16["queries"] == val_queries
    assert fp32["top5"] >= 0.99
    assert fp16["top1_ties"] >= 0.98  # top-1 IoU >= 0.9, or a tie of the fp32 reference
    assert report["next"] == f'gaze-search STORE "query" --bundle {bundle}'
    assert set(report["files"]) == {MANIFEST, "tokenizer.json", "text.onnx", "video.onnx",
                                    "ground.onnx", "text_fp16.onnx", "video_fp16.onnx",
                                    "ground_fp16.onnx"}


def test_manifest_describes_the_bundle(trained, exported):
    _, ckpt = trained
    bundle, report = exported
    manifest = verify_bundle(bundle)
    cfg = checkpoint.load_config(ckpt)["train_config"]
    assert manifest.version == VERSION and manifest.model == cfg
    assert manifest.variant == "gaze" and manifest.uses_gaze
    assert manifest.dims == {"video_dim": 256, "gaze_dim": 512, "text_dim": 384, "hidden": 16}
    assert manifest.time_grid == EGO4D == checkpoint.time_grid(ckpt)  # the stores' grid
    assert manifest.strides == (1, 2, 4) and manifest.length_multiple == 4
    assert manifest.postprocess == PostprocessConfig()
    assert manifest.text["max_tokens"] == 32 and (bundle / manifest.text["tokenizer"]).is_file()
    assert set(manifest.files) == set(report["files"]) - {MANIFEST}
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(manifest.exporter)
    assert manifest.validation["agreement"] == report["agreement"]
    video, ground = manifest.graph("video"), manifest.graph("ground", "fp16")
    assert [s.name for s in video.inputs] == ["video", "mask", "gaze_features"]
    assert [s.name for s in video.outputs] == ["video_emb", "gaze_emb", "coarse_emb"]
    assert video.outputs[2].shape == ("batch", "spans", 128)
    assert [s.name for s in manifest.graph("text").outputs] == ["features", "query_emb"]
    assert manifest.coarse == {"span": 16, "dim": 128, "gaze": True}
    assert ground.file == "ground_fp16.onnx"
    assert [s.name for s in ground.outputs] == ["logits", "distances", "point_mask"]
    assert ground.inputs[1].dtype == "bool" and ground.inputs[1].shape == ("batch", "length")


def test_dynamic_axes_stay_symbolic(exported):
    bundle, _ = exported
    manifest = verify_bundle(bundle)
    for graphs in manifest.graphs.values():
        for spec in graphs.values():
            model = onnx.load(str(bundle / spec.file))
            assert io_problems(model, spec.inputs, spec.outputs) == [], spec.file
    session = ort_session(bundle / "ground.onnx", threads=1)
    assert [i.shape for i in session.get_inputs()][:2] == [["batch", "length", 16],
                                                           ["batch", "length"]]
    assert session.get_outputs()[1].shape == ["batch", "points", 2]
    video = ort_session(bundle / "video.onnx", threads=1)  # any length, batch 1
    emb, _, spans = video.run(None, {"video": np.ones((1, 35, 256), np.float32),
                                     "mask": np.ones((1, 35), bool),
                                     "gaze_features": np.ones((1, 35, 512), np.float32)})
    assert emb.shape == (1, 35, 16) and spans.shape == (1, 3, 128)  # ceil(35 / 16) spans


def test_io_check_catches_a_specialised_axis():
    make = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [make("x", onnx.TensorProto.FLOAT, ["batch", 7, 4])],
                                   [make("y", onnx.TensorProto.FLOAT, ["b", 7, 4])])
    spec = TensorSpec("x", "float32", ("batch", "length", 4))
    problems = io_problems(onnx.helper.make_model(graph), (spec,),
                           (TensorSpec("y", "float16", ("batch", "length", 4)),))
    assert problems == ["input x axis 1 (length) was specialised to the constant 7",
                        "output y is float32, expected float16",
                        "output y axis 0 is named 'b', expected 'batch'",
                        "output y axis 1 (length) was specialised to the constant 7"]


def test_fp16_graph_output_that_later_nodes_read(tmp_path):
    """An output also read inside the graph (the video graph's ``video_emb`` feeds the gaze
    attention): readers get the fp16 tensor or the output's own Cast, names stay unique."""
    from gazenlq.export.fp16 import to_fp16

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.ln = torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)

        def forward(self, x):
            y = self.lin(x)
            return y, self.ln(y) * y

    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():  # the exporter's own deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(2, 8),), str(path), input_names=["x"],
                          output_names=["y", "z"], dynamo=True)
    half = to_fp16(onnx.load(str(path)))
    names = [n.name for n in half.graph.node]
    assert len(names) == len(set(names))
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    want = ort_session(path).run(None, {"x": x})
    half_path = tmp_path / "net_fp16.onnx"
    onnx.save(half, str(half_path))
    got = ort_session(half_path).run(None, {"x": x})
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=2e-2, rtol=2e-2)


def test_fp16_graphs_keep_normalisation_and_softmax_in_fp32(exported):
    bundle, _ = exported
    for name in ("text", "video", "ground"):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(bundle / f"{name}_fp16.onnx")))
        graph = model.graph
        types = {vi.name: vi.type.tensor_type.elem_type
                 for vi in (*graph.input, *graph.output, *graph.value_info)}
        types.update({i.name: i.data_type for i in graph.initializer})
        kept = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
        assert kept and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in kept)
        assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
        assert {vi.type.tensor_type.elem_type for vi in graph.input} <= {
            onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL, onnx.TensorProto.INT64}
        assert all(vi.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16
                   for vi in graph.output)
        ranges = [n for n in graph.node if n.op_type == "Range"]
        assert all(types[n.output[0]] != onnx.TensorProto.FLOAT16 for n in ranges)


def test_check_revalidates_against_the_checkpoint(trained, exported):
    _, ckpt = trained
    bundle, _ = exported
    report = check_bundle(bundle, ckpt, threads=1)
    assert report.ok, report.problems
    assert len(report.parity) == 3 * 8 and all(r.ok for r in report.parity)
    assert report.case_source == "random clips"
    assert report.agreement["fp32"].top5 >= 0.99 and "fp16" in report.agreement


def test_cli_check_accepts_an_intact_bundle(exported):
    bundle, _ = exported
    out = _export("--check", bundle)
    assert out.returncode == 0, out.stderr
    assert "bundle checked" in out.stdout and "next: gaze-search" in out.stdout
    assert "bundle written" not in out.stdout


def _linked_copy(bundle: Path, dst: Path) -> Path:
    """A copy sharing the files (hard links); damage replaces files, never edits them."""
    shutil.copytree(bundle, dst, copy_function=os.link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _flip_last_byte(path: Path) -> None:
    data = path.read_bytes()
    _replace(path, data[:-1] + bytes([data[-1] ^ 1]))


def _newer(path: Path) -> None:
    raw = json.loads(path.read_text())
    _replace(path, json.dumps({**raw, "version": VERSION + 1}).encode())


@pytest.mark.parametrize("file,damage,needle", [
    ("ground.onnx", _flip_last_byte, "ground.onnx: sha256 does not match"),
    ("video.onnx", Path.unlink, "video.onnx: missing"),
    (MANIFEST, _newer, f"format version {VERSION + 1} is newer"),
])
def test_cli_refuses_damaged_bundles_in_one_line(exported, tmp_path, file, damage, needle):
    bundle = _linked_copy(exported[0], tmp_path / "bundle")
    damage(bundle / file)
    out = _export("--check", bundle)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    verify_bundle(exported[0])  # the original is untouched


def test_cli_refuses_a_stage1_checkpoint(trained, tmp_path):
    _, ckpt = trained
    out = _export(ckpt.parents[1] / "stage1" / "best", "-o", tmp_path / "b")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "not a stage-2" in out.stderr and not (tmp_path / "b").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="tensorrt is installed here")
def test_cli_trt_without_tensorrt_stops_in_one_line(trained, tmp_path):
    _, ckpt = trained
    out = _export(ckpt, "-o", tmp_path / "b", "--trt")
    assert out.returncode == 2 and out.stdout == "" and out.stderr.count("\n") == 1
    assert "tensorrt" in out.stderr and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_cli_failed_validation_writes_nothing(trained, tmp_path):
    _, ckpt = trained
    out = _export(ckpt, "-o", tmp_path / "b", "--tolerance", "0", "--threads", "1", "--quiet")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and "validation failed, nothing written" in out.stderr
    assert "NO" in out.stdout and not (tmp_path / "b").exists()
    assert not list(tmp_path.glob(".b.*"))


@pytest.mark.slow
def test_no_gaze_variant_exports_without_gaze_inputs(tmp_path):
    cfg = with_dims(tiny_config(), video_dim=64, gaze_dim=512, text_dim=384, variant="none")
    cfg = replace(cfg, grounding=replace(cfg.grounding, branch_blocks=3))
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, config={"kind": "gazenlq", "train_config": cfg.to_dict(),
                                  **checkpoint.grid_entry(EGO4D)},
                    weights=GazeNLQ(cfg).state_dict())
    report = export_bundle(ckpt, tmp_path / "bundle", threads=1)
    assert report.ok and report.agreement["fp32"].top5 >= 0.99
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.dims["gaze_dim"] is None and manifest.length_multiple == 8
    assert [s.name for s in manifest.graph("video").inputs] == ["video", "mask"]
    assert "gaze_emb" not in [s.name for s in manifest.graph("ground").inputs]


@pytest.mark.slow
def test_control_variant_exports_its_own_gaze_tokens(tmp_path):
    """The video graph computes the variant's tokens (validated against PyTorch output by
    output), and they are not GazeNLQ's: the same weights as 'gaze' give other outputs.
    ('neg_gaze' takes the same path: the variant name reaches ``gaze_tokens``.)"""
    variant = "uniform_gaze"
    cfg = with_dims(tiny_config(), video_dim=64, gaze_dim=512, text_dim=384, variant=variant)
    cfg = replace(cfg, grounding=replace(cfg.grounding, branch_blocks=3))
    torch.manual_seed(0)
    weights = GazeNLQ(cfg).state_dict()
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, config={"kind": "gazenlq", "train_config": cfg.to_dict(),
                                  **checkpoint.grid_entry(EGO4D)},
                    weights=weights)
    report = export_bundle(ckpt, tmp_path / "bundle", threads=1)
    assert report.ok and report.agreement["fp32"].top5 >= 0.99
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest.variant == variant and manifest.uses_gaze
    video = ort_session(tmp_path / "bundle" / manifest.graph("video").file, threads=1)
    rng = np.random.default_rng(0)
    feeds = {"video": rng.standard_normal((1, 16, 64), dtype=np.float32),
             "mask": np.ones((1, 16), dtype=bool),
             "gaze_features": rng.standard_normal((1, 16, 512), dtype=np.float32)}
    ours = video.run(None, feeds)[1]
    gaze = GazeNLQ(replace(cfg, grounding=replace(cfg.grounding, gaze="gaze"))).eval()
    gaze.load_state_dict(weights)
    with torch.no_grad():
        mask = torch.from_numpy(feeds["mask"])
        _, theirs = gaze.grounding.embed_video(
            torch.from_numpy(feeds["video"]), mask,
            gaze.gaze_tokens(torch.from_numpy(feeds["gaze_features"]), mask))
    assert not np.allclose(ours, theirs.numpy(), atol=1e-3)


def _tensorrt_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'gazenlq[trt]' on a GPU machine)"
    if gpu_compute_capability() is None:
        return "no NVIDIA GPU (nvidia-smi found none)"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_tensorrt_missing() is not None, reason=_tensorrt_missing() or "")
def test_tensorrt_engines_build_with_sidecars(exported, tmp_path):
    """fp32 and fp16 engines, each in its own directory, each accepted by exactly the
    check the runner makes (the graph build_plan names for this TensorRT, the precision)."""
    import tensorrt

    bundle = _linked_copy(exported[0], tmp_path / "bundle")
    engines = build_engines(bundle, TrtOptions(opt_length=64, max_length=256, opt_batch=2,
                                               max_batch=4, fp16=True))
    manifest = verify_bundle(bundle)  # engines are not part of the manifest
    assert [f"{p.parent.name}/{p.name}" for p in engines] == [
        f"{precision}/{g}.engine" for precision in ("fp32", "fp16")
        for g in ("text", "video", "ground")]
    for path in engines:
        precision = path.parent.name
        sidecar = read_sidecar(path.with_name(path.name + ".json"))
        assert sidecar["profiles"]["mask"]["max"] == [4, 256]
        graph, _ = engine_source(manifest, path.stem, precision, tensorrt.__version__)
        check_engine_sidecar(sidecar, trt_version=tensorrt.__version__,
                             compute_capability=gpu_compute_capability() or "",
                             precision=precision, onnx_file=graph.file,
                             onnx_sha256=manifest.files[graph.file].sha256)
