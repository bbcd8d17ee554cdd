"""Torch-free bundle logic: manifest reading and verification, TensorRT profiles and sidecars."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    check_engine_sidecar,
    engine_sidecar,
    parse_compute_capability,
    read_sidecar,
    require_tensorrt,
)
from gazenlq.errors import GazeNLQError, MissingDependencyError
from gazenlq.export.tensorrt import TrtOptions, axis_ranges, build_plan, profile_shapes
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
    ranges = axis_ranges(TrtOptions(opt_length=1000, max_length=2500, max_batch=16),
                         length_multiple=64, max_tokens=32)
    assert ranges == {"batch": (1, 8, 16), "length": (64, 1024, 2560),
                      "text_length": (1, 16, 32)}
    shapes = profile_shapes(GROUND, ranges)
    assert shapes["video_emb"] == {"min": [1, 64, 8], "opt": [8, 1024, 8],
                                   "max": [16, 2560, 8]}
    assert [s[:2] for s in shapes["mask"].values()] == [s[:2] for s in
                                                        shapes["video_emb"].values()]
    assert shapes["text_mask"]["max"] == [16, 32]
    small = axis_ranges(TrtOptions(min_length=100, opt_text_length=64), length_multiple=64,
                        max_tokens=20)
    assert small["length"][0] == 128 and small["text_length"] == (1, 20, 20)


@pytest.mark.parametrize("options", [TrtOptions(opt_length=4096),
                                     TrtOptions(opt_batch=64, max_batch=32),
                                     TrtOptions(min_length=2000, opt_length=1024)])
def test_inconsistent_profiles_are_refused(options):
    with pytest.raises(GazeNLQError, match="min <= opt <= max"):
        axis_ranges(options, length_multiple=64, max_tokens=32)


def test_build_plan_follows_the_tensorrt_major_version():
    assert build_plan(10, fp16=False) == ("fp32", [])
    assert build_plan(10, fp16=True) == ("fp32", ["FP16"])  # BuilderFlag.FP16 exists in 10
    assert build_plan(11, fp16=True) == ("fp16", [])  # strongly typed: from the graph
    assert build_plan(11, fp16=False) == ("fp32", [])


def test_sidecar_refuses_mismatched_engines_with_a_rebuild_message(tmp_path):
    profiles = profile_shapes(GROUND, axis_ranges(TrtOptions(), length_multiple=4,
                                                  max_tokens=32))
    sidecar = engine_sidecar(graph=GROUND, onnx_sha256="a" * 64, trt_version="10.9.0",
                             compute_capability="8.6", profiles=profiles, flags=["FP16"])
    path = tmp_path / "ground.engine.json"
    path.write_text(json.dumps(sidecar))
    sidecar = read_sidecar(path)
    assert sidecar["profiles"]["mask"]["opt"] == [8, 1024]
    ok = {"trt_version": "10.9.0", "compute_capability": "8.6", "onnx_sha256": "a" * 64}
    check_engine_sidecar(sidecar, **ok)
    for change, needle in ((dict(trt_version="11.4.0"), "TensorRT 10.9.0, this is 11.4.0"),
                           (dict(compute_capability="9.0"), "capability 8.6, this GPU is 9.0"),
                           (dict(onnx_sha256="b" * 64), "another ground.onnx")):
        with pytest.raises(EngineMismatchError, match=needle) as info:
            check_engine_sidecar(sidecar, **{**ok, **change}, engine="ground.engine")
        assert "rebuild" in str(info.value) and str(info.value).startswith("ground.engine")
    path.write_text("[]")
    with pytest.raises(EngineMismatchError, match=r"not a gazenlq engine sidecar.*rebuild"):
        read_sidecar(path)


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
