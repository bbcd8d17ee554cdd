"""The benchmark suite's own logic: device detection, the GPU section's code paths up to the
point a GPU is needed, training-step timing, plots and the report (real runs, tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from benchmarks import common
from benchmarks.bench_gpu import ground_section, search_section, video_store
from benchmarks.bench_train import Case, run_case
from benchmarks.devices import Devices, detect
from benchmarks.models import config, random_bundle
from benchmarks.plots import search_plots
from gazenlq.errors import GazeNLQError
from gazenlq.export.graphs import load_model
from tests.conftest import REPO

GPU_DEVICES = ("cuda", "tensorrt", "trt-native")


@pytest.fixture(scope="module")
def devices() -> Devices:
    return detect()


def test_detection_gives_a_reason_for_every_missing_backend(devices):
    assert devices.engine_devices["cpu"] == ""
    if devices.gpu is None:  # this machine: every GPU backend skipped, each with why
        for d in GPU_DEVICES:
            reason = devices.engine_devices[d]
            assert reason and ("onnxruntime" in reason or "tensorrt" in reason), (d, reason)
        assert not devices.torch_cuda and "no CUDA GPU" in devices.torch_cuda_reason
    json.dumps(devices.to_dict())  # recorded in results JSON


def test_gpu_section_runs_cpu_rows_and_skips_gpu_rows_with_reasons(tiny_trained, tiny_bundle,
                                                                   devices, tmp_path):
    model, _ = load_model(tiny_trained[1])
    ground, _ = ground_section(model, tiny_bundle, devices, (1, 2), repeat=1,
                                     length=256)
    rows = {(r[0], r[1]): r for r in ground.rows}
    eager_cpu, ort_cpu = rows[("PyTorch eager", "cpu")], rows[("bundle graph (ONNX Runtime)",
                                                                "cpu")]
    assert eager_cpu[3].endswith("]") and ort_cpu[3].endswith("]")  # measured, with spread
    assert eager_cpu[4] == "-"  # the CPU reference times one query per call only
    assert ort_cpu[-1].startswith("ran on CPUExecutionProvider; PyTorch eager / this: ")
    for (name, device), row in rows.items():
        available = device == "cpu" or (devices.torch_cuda if "PyTorch" in name
                                        else not devices.engine_devices[device])
        assert available == (not row[-1].startswith("skipped: ")), row
    store = video_store(tmp_path, 0.05, video_dim=256, cell_dim=32)
    search, s_summary = search_section(tiny_bundle, store, devices, (1,), repeat=1)
    by_device = {r[0]: r for r in search.rows}
    assert set(by_device) == {"cpu", *GPU_DEVICES}
    assert s_summary["cpu"]["index_build_s"] > 0 and s_summary["cpu"]["s_per_query_1"] > 0
    for d in GPU_DEVICES:
        assert (d in s_summary) == (not devices.engine_devices[d])


def test_training_step_timing_and_cuda_refusal():
    result = run_case(Case("small", "cpu", 64, 2, 2, repeat=2))
    assert result["precision"] == "float32" and result["stage2"].median > 0
    assert result["stage1"].runs >= 2
    if not torch.cuda.is_available():
        with pytest.raises(GazeNLQError, match="no CUDA GPU"):
            run_case(Case("small", "cuda", 64, 1, 1, repeat=1))


def test_random_bundle_is_reused_and_matches_its_config(tmp_path):
    cfg = config("small", video_dim=32, gaze_dim=64)
    cfg = replace(cfg, grounding=replace(cfg.grounding, hidden=16, heads=2, stem_blocks=1,
                                         branch_blocks=2, mlp_ratio=1),
                  estimator=replace(cfg.estimator, hidden=16, glu_layers=1, heads=2,
                                    embed_dim=16))
    bundle = random_bundle(cfg, tmp_path)
    stamp = (bundle / "manifest.json").stat().st_mtime_ns
    assert random_bundle(cfg, tmp_path) == bundle
    assert (bundle / "manifest.json").stat().st_mtime_ns == stamp  # reused, not re-exported


def test_search_plots_and_report(tmp_path, monkeypatch):
    import benchmarks.plots as plots

    monkeypatch.setattr(plots, "PLOTS_DIR", tmp_path / "plots")
    warm = [{"hours": h, "batch": b, "median_s": 0.01 * h * (1 + b / 4), "p10_s": 0.009 * h,
             "p90_s": 0.012 * h * (1 + b / 4)} for h in (0.5, 1.0, 10.0) for b in (1, 8)]
    made = search_plots(warm, "test")
    assert [c for c, _ in made] == ["Search latency per query versus video length",
                                    "Search throughput versus queries per call"]
    for _, rel in made:
        png = tmp_path / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(common, "RESULTS_MD", tmp_path / "RESULTS.md")
    common.write_result("x", "X bench", [common.Section("h", ["a", "b"], [[1, 2.5]], "n")],
                        command="python -m benchmarks.x", plots=made)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## X bench" in md and "`python -m benchmarks.x`" in md and "| 1 | 2.5 |" in md
    assert "![Search latency per query versus video length](plots/" in md
    doc = json.loads((tmp_path / "results" / "x.json").read_text())
    assert doc["machine"]["cores"] >= 1 and "numpy" in doc["machine"]["versions"]


def test_suite_rejects_unknown_benchmarks():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown benchmark(s) nope" in out.stderr
