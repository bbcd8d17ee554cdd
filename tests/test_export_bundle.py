"""Torch-free bundle logic: manifest reading and verification, TensorRT profiles and sidecars."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gazenlq.bundle import PostprocessConfig
from gazenlq.bundle.manifest import (
    FORMAT,
    MANIFEST,
    VERSION,
    BundleError,
    FileEntry,
    GraphSpec,
    Manifest,
    TensorSpec,
    file_entry,
    read_manifest,
    verify_bundle,
)
from gazenlq.bundle.trt import (
    EngineMismatchError,
    axis_ranges,
    build_plan,
    check_engine_sidecar,
    check_fits,
    engine_path,
    engine_sidecar,
    engine_source,
    parse_compute_capability,
    profile_bounds,
    profile_shapes,
    read_sidecar,
    require_tensorrt,
    row_chunks,
)
from gazenlq.errors import GazeNLQError, MissingDependencyError
from gazenlq.export.tensorrt import TrtOptions
from gazenlq.timegrid import EGO4D

GROUND = GraphSpec("ground", "ground.onnx", "fp32", (
    TensorSpec("video_emb", "float32", ("batch", "length", 8)),
    TensorSpec("mask", "bool", ("batch", "length")),
    TensorSpec("tokens", "float32", ("batch", "text_length", 4)),
    TensorSpec("text_mask", "bool", ("batch", "text_length")),
), (TensorSpec("logits", "float32", ("batch", "points")),
      TensorSpec("distances", "float32", ("batch", "points", 2)),
      TensorSpec("point_mask", "bool", ("batch", "points"))))


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A minimal bundle: one (fake) graph file and the tokenizer, hashed in the manifest."""
    (tmp_path / "ground.onnx").write_bytes(b"graph bytes")
    (tmp_path / "tokenizer.json").write_text("{}")
    manifest = Manifest(
        variant="none", model={"grounding": {"hidden": 8}}, dims={"video_dim": 8,
                                                                  "gaze_dim": None},
        time_grid=EGO4D, strides=(1, 2, 4), length_multiple=4, max_len=2560,
        text={"tokenizer": "tokenizer.json", "max_tokens": 32},
        postprocess=PostprocessConfig(top_k=5),
        graphs={"fp32": {"ground": GROUND}},
        files={n: file_entry(tmp_path / n) for n in ("ground.onnx", "tokenizer.json")})
    (tmp_path / MANIFEST).write_text(json.dumps(manifest.to_dict()))
    return tmp_path


def _edit_manifest(bundle: Path, **changes) -> None:
    raw = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**raw, **changes}))


def test_manifest_round_trips_and_verifies(bundle):
    manifest = verify_bundle(bundle)
    assert manifest == read_manifest(bundle)
    assert manifest.version == VERSION and manifest.time_grid == EGO4D
    assert manifest.graph("ground") == GROUND and manifest.levels == 3
    assert GROUND.inputs[0].dynamic_axes == {0: "batch", 1: "length"}
    raw = json.loads((bundle / MANIFEST).read_text())
    assert raw["format"] == FORMAT and "points" in raw["axes"]
    with pytest.raises(BundleError, match=r"no fp16 ground graph.*--fp16"):
        manifest.graph("ground", "fp16")


@pytest.mark.parametrize("damage,needle", [
    (lambda b: (b / "ground.onnx").write_bytes(b"graph bytez"), "ground.onnx: sha256"),
    (lambda b: (b / "ground.onnx").write_bytes(b"longer graph bytes"), "ground.onnx: sha256"),
    (lambda b: (b / "tokenizer.json").unlink(), "tokenizer.json: missing"),
    (lambda b: _edit_manifest(b, version=VERSION + 1), "version 2 is newer"),
    (lambda b: _edit_manifest(b, format="other"), "not a gazenlq bundle manifest"),
    (lambda b: _edit_manifest(b, graphs={"fp32": {"x": 1}}), "malformed manifest"),
    (lambda b: (b / MANIFEST).write_text("{"), "unreadable manifest"),
    (lambda b: (b / MANIFEST).unlink(), "not a gazenlq bundle"),
])
def test_damaged_bundles_are_refused_in_one_line(bundle, damage, needle):
    damage(bundle)
    with pytest.raises(BundleError, match=needle) as info:
        verify_bundle(bundle)
    assert "\n" not in str(info.value)


def test_graph_files_must_be_hashed(bundle):
    raw = json.loads((bundle / MANIFEST).read_text())
    del raw["files"]["ground.onnx"]
    (bundle / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"ground\.onnx has no sha256"):
        verify_bundle(bundle)


def test_torch_free_modules_import_neither_torch_nor_onnx():
    code = ("import sys, gazenlq.export, gazenlq.bundle.manifest, gazenlq.export.tensorrt; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- TensorRT: profiles and sidecars (pure functions) ---------------------------------------

def test_profiles_round_lengths_to_the_multiple_and_share_axes():
    ranges = axis_ranges(length_multiple=64, max_tokens=32, max_length=2500, max_batch=16,
                         opt_length=1000)
    assert ranges == {"batch": (1, 8, 16), "length": (64, 1024, 2560),
                      "text_length": (1, 16, 32)}
    shapes = profile_shapes(GROUND, ranges)
    assert shapes["video_emb"] == {"min": [1, 64, 8], "opt": [8, 1024, 8],
                                   "max": [16, 2560, 8]}
    assert [s[:2] for s in shapes["mask"].values()] == [s[:2] for s in
                                                        shapes["video_emb"].values()]
    assert shapes["text_mask"]["max"] == [16, 32]
    small = axis_ranges(length_multiple=64, max_tokens=20, max_length=2560, max_batch=32,
                        min_length=100, opt_text_length=64)
    assert small["length"][0] == 128 and small["text_length"] == (1, 20, 20)
    assert profile_bounds(GROUND, shapes) == {"batch": (1, 16), "length": (64, 2560),
                                              "text_length": (1, 32)}


def _manifest(max_len: int, fp16: bool = True) -> Manifest:
    graphs = {"fp32": {"ground": GROUND}}
    files = {"ground.onnx": FileEntry("a" * 64, 1)}
    if fp16:
        graphs["fp16"] = {"ground": replace(GROUND, file="ground_fp16.onnx",
                                            precision="fp16")}
        files["ground_fp16.onnx"] = FileEntry("f" * 64, 1)
    return Manifest(variant="none", model={}, dims={"video_dim": 8, "gaze_dim": None},
                    time_grid=EGO4D, strides=(1, 2, 4), length_multiple=4, max_len=max_len,
                    text={"tokenizer": "tokenizer.json", "max_tokens": 24},
                    postprocess=PostprocessConfig(top_k=5), graphs=graphs, files=files)


def test_profiles_come_from_the_bundle_and_the_search_defaults():
    """Issue 22: not a fixed 32 x 2,560 - the manifest's max length (the engine's default
    window) and the search's default batch, every value overridable."""
    from gazenlq.engine.options import SearchOptions

    ranges = TrtOptions().ranges(_manifest(max_len=5120))
    assert SearchOptions().batch == 32
    assert ranges == {"batch": (1, 8, 32), "length": (4, 1024, 5120),
                      "text_length": (1, 16, 24)}
    assert TrtOptions().ranges(_manifest(max_len=256))["length"] == (4, 256, 256)
    assert TrtOptions(max_length=8192, max_batch=4).ranges(_manifest(256)) == {
        "batch": (1, 4, 4), "length": (4, 1024, 8192), "text_length": (1, 16, 24)}


@pytest.mark.parametrize("kwargs", [dict(opt_length=4096), dict(opt_batch=64, max_batch=32),
                                    dict(min_length=2000, opt_length=1024)])
def test_inconsistent_profiles_are_refused(kwargs):
    with pytest.raises(GazeNLQError, match="min <= opt <= max"):
        axis_ranges(**{"length_multiple": 64, "max_tokens": 32, "max_length": 2560,
                       "max_batch": 32, **kwargs})


@given(rows=st.integers(0, 500), most=st.integers(1, 64))
def test_row_chunks_cover_every_row_once_within_the_limit(rows, most):
    chunks = row_chunks(rows, most)
    covered = [i for c in chunks for i in range(rows)[c]]
    assert covered == list(range(rows))
    assert all(c.stop - c.start <= most for c in chunks)
    assert len(chunks) == max(1, -(-rows // most))


def test_lengths_outside_a_profile_are_one_line_naming_the_input():
    bounds = {"batch": (1, 2), "length": (4, 64), "text_length": (1, 8)}
    ok = {"video_emb": (9, 64, 8), "mask": (9, 64), "tokens": (9, 8, 4), "text_mask": (9, 8)}
    check_fits(GROUND, bounds, ok, "tensorrt ground.onnx")  # rows are split, not refused
    with pytest.raises(GazeNLQError) as info:
        check_fits(GROUND, bounds, {**ok, "video_emb": (1, 128, 8)}, "tensorrt ground.onnx")
    msg = str(info.value)
    assert msg.startswith("tensorrt ground.onnx: input video_emb has length 128, outside "
                          "the 4..64") and "--window" in msg and "\n" not in msg


def test_build_plan_follows_the_tensorrt_major_version():
    assert build_plan(10, fp16=False) == ("fp32", [])
    assert build_plan(10, fp16=True) == ("fp32", ["FP16"])  # BuilderFlag.FP16 exists in 10
    assert build_plan(11, fp16=True) == ("fp16", [])  # strongly typed: from the graph
    assert build_plan(11, fp16=False) == ("fp32", [])


def _built(manifest: Manifest, precision: str, trt_version: str) -> dict:
    """The sidecar build_engines writes for the ground engine (same calls, no GPU)."""
    graph, flags = engine_source(manifest, "ground", precision, trt_version)
    return engine_sidecar(graph=graph, precision=precision,
                          onnx_sha256=manifest.files[graph.file].sha256,
                          trt_version=trt_version, compute_capability="8.9",
                          profiles=profile_shapes(graph, TrtOptions().ranges(manifest)),
                          flags=flags)


def _runner_check(sidecar: dict, manifest: Manifest, precision: str, trt_version: str):
    """What TrtGraph checks before it loads an engine (same calls, no GPU)."""
    graph, _ = engine_source(manifest, "ground", precision, trt_version)
    check_engine_sidecar(sidecar, trt_version=trt_version, compute_capability="8.9",
                         precision=precision, onnx_file=graph.file,
                         onnx_sha256=manifest.files[graph.file].sha256,
                         engine=f"tensorrt/{precision}/ground.engine")


@pytest.mark.parametrize("trt_version", ["10.9.0.34", "11.0.0"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_runner_accepts_exactly_the_engine_the_builder_wrote(precision, trt_version):
    """Issue 22, item 1: on TensorRT 10 an fp16 engine is built from the fp32 graph and was
    refused forever by a runner that checked the fp16 graph's hash (11: the reverse)."""
    manifest = _manifest(max_len=2560)
    sidecar = _built(manifest, precision, trt_version)
    assert sidecar["precision"] == precision
    assert sidecar["onnx"] == ("ground_fp16.onnx" if precision == "fp16"
                               and trt_version.startswith("11") else "ground.onnx")
    _runner_check(sidecar, manifest, precision, trt_version)
    other = "fp32" if precision == "fp16" else "fp16"
    with pytest.raises(EngineMismatchError, match=f"built for {precision}, asked for {other}"):
        _runner_check(sidecar, manifest, other, trt_version)


def test_an_fp16_engine_on_tensorrt_10_needs_no_fp16_graphs():
    manifest = _manifest(max_len=2560, fp16=False)
    _runner_check(_built(manifest, "fp16", "10.9.0"), manifest, "fp16", "10.9.0")
    with pytest.raises(BundleError, match="no fp16 ground graph"):
        _built(manifest, "fp16", "11.0.0")


def test_sidecar_refuses_mismatched_engines_with_a_rebuild_message(tmp_path):
    manifest = _manifest(max_len=2560)
    path = tmp_path / "ground.engine.json"
    path.write_text(json.dumps(_built(manifest, "fp16", "10.9.0")))
    sidecar = read_sidecar(path)
    assert sidecar["profiles"]["mask"]["opt"] == [8, 1024]
    assert sidecar["builder_flags"] == ["FP16"] and sidecar["onnx_precision"] == "fp32"
    ok = {"trt_version": "10.9.0", "compute_capability": "8.9", "precision": "fp16",
          "onnx_file": "ground.onnx", "onnx_sha256": "a" * 64}
    check_engine_sidecar(sidecar, **ok)
    for change, needle in ((dict(trt_version="11.4.0"), "TensorRT 10.9.0, this is 11.4.0"),
                           (dict(compute_capability="9.0"), "capability 8.9, this GPU is 9.0"),
                           (dict(onnx_sha256="b" * 64), "needs ground.onnx"),
                           (dict(precision="fp32"), "built for fp16, asked for fp32")):
        with pytest.raises(EngineMismatchError, match=needle) as info:
            check_engine_sidecar(sidecar, **{**ok, **change}, engine="ground.engine")
        assert "rebuild" in str(info.value) and str(info.value).startswith("ground.engine")
    with pytest.raises(EngineMismatchError, match="sidecar version 1"):
        check_engine_sidecar({**sidecar, "version": 1}, **ok)
    path.write_text("[]")
    with pytest.raises(EngineMismatchError, match=r"not a gazenlq engine sidecar.*rebuild"):
        read_sidecar(path)


def test_engines_of_each_precision_live_apart(tmp_path):
    assert engine_path(tmp_path, "ground", "fp16") == tmp_path / "tensorrt/fp16/ground.engine"
    assert engine_path(tmp_path, "ground", "fp32").parent != engine_path(
        tmp_path, "ground", "fp16").parent


def test_compute_capability_parsing():
    assert parse_compute_capability("8.6\n8.6\n") == "8.6"
    assert parse_compute_capability("12.0") == "12.0"
    assert parse_compute_capability("") is None
    assert parse_compute_capability("[N/A]") is None


def test_trt_without_tensorrt_is_one_clear_error():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="needs the tensorrt package"):
            require_tensorrt()
    else:
        pytest.skip("tensorrt is installed here")


def test_file_entry(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_entry(tmp_path / "f") == FileEntry(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3)


def test_bundle_hashes_are_remembered_until_a_file_changes(bundle, tmp_path, monkeypatch):
    import time

    from gazenlq.bundle import hashes

    calls = []
    real = hashes.sha256_file
    monkeypatch.setattr(hashes, "sha256_file", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(hashes, "_memo_file", lambda: tmp_path / "memo" / "sha256.json")
    time.sleep(hashes.SETTLED_NS / 1e9 + 0.1)  # files changed just now are never trusted
    verify_bundle(bundle)
    assert len(calls) == 2  # ground.onnx and tokenizer.json
    verify_bundle(bundle)
    assert len(calls) == 2  # unchanged: not read again
    with open(bundle / "ground.onnx", "r+b") as f:  # same size, other bytes
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sha256 does not match"):
        verify_bundle(bundle)
    assert len(calls) == 3
