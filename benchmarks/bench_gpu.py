"""Paper-preset inference on every backend this machine has: the GPU section of the report.

    python -m benchmarks.bench_gpu [--quick]

A paper-preset GazeNLQ (hidden 384, window 9, 4 + 6 blocks, max length 2,560) with random
weights (latency does not depend on them) is exported as a validated bundle (fp32 + fp16
graphs, plus native TensorRT engines where TensorRT is installed), and a 1-hour EgoSim
video is written with Ego4D's feature widths (2,304-d video, 1,536-d gaze input). Then:

- the per-query graph at T = 2,560: PyTorch eager versus the bundle's graph on every
  gaze-search device (cpu, cuda, tensorrt, trt-native), 1 and 8 queries per call;
- search over the hour on every device: building the index (the per-video graph over the
  hour) and warm latency per query with the index present.

CPU rows always run and are the reference; CUDA, TensorRT and native TensorRT rows run
where present and otherwise say why they were skipped (``benchmarks.devices``). Writes
benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, Section, Timing, measure, write_result
from benchmarks.devices import Devices, detect
from benchmarks.models import config, random_bundle
from gazenlq.training.config import TrainConfig
from gazenlq.training.model import GazeNLQ

OUT = ROOT / "out" / "gpu"
LENGTH = 2560
TEXT_TOKENS = 12
VIDEO_DIM, CELL_DIM = 2304, 96  # gaze input 16 cells x 96 = 1,536 (Omnivore's width)
GPU_PRECISION = "fp16"
QUERIES = ["where did I put the bulb", "which tool did I pick up", "what did I put in the box",
           "where is my wallet", "who handed me the keys", "how many eggs did I cut",
           "in which room did I see the kettle", "where was the mug before I washed the pan"]


def paper_config() -> TrainConfig:
    return config("paper", video_dim=VIDEO_DIM, gaze_dim=16 * CELL_DIM)


def video_store(out: Path, hours: float, video_dim: int = VIDEO_DIM, cell_dim: int = CELL_DIM
                ) -> Path:
    """One EgoSim session of ``hours`` with (by default) Ego4D feature widths, no gaze maps."""
    from gazenlq.store import find_stores
    from gazenlq.synth.config import EgoSimConfig
    from gazenlq.synth.dataset import generate

    cfg = EgoSimConfig(seed=11, sessions=1, session_hours=hours, gaze_fraction=0.0,
                       video_dim=video_dim, cell_dim=cell_dim)
    path = out / f"video-{hours:g}h-{cfg.fingerprint()}"  # a new EgoSim config, a new store
    generate(cfg, path)
    return find_stores(path / "stores")[0]


def _torch_ground(graph, device: str, autocast: bool
                  ) -> Callable[[dict[str, np.ndarray]], object]:
    """PyTorch eager per-query graph on ``device`` (inputs copied in, outputs copied out,
    as the bundle's graphs do), under the trainer's autocast when ``autocast``."""
    from gazenlq.training.device import Precision

    dev = torch.device(device)
    module = graph.module.to(dev).eval()
    amp = Precision.for_device(dev if autocast else torch.device("cpu"))

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> object:
        args = [torch.from_numpy(feeds[s.name]).to(dev) for s in graph.inputs]
        with amp.autocast():
            out = module(*args)
        return [o.float().cpu() for o in out]

    return run


def ground_section(model: GazeNLQ, bundle: Path, devices: Devices, batches: tuple[int, ...],
                   repeat: int, length: int = LENGTH) -> tuple[Section, dict]:
    """The per-query graph at ``length`` steps: PyTorch eager and the bundle's graph on every
    device; unavailable devices give a row with the reason."""
    from gazenlq.engine.runtime import Runtime, RuntimeOptions
    from gazenlq.export.graphs import graph_defs
    from gazenlq.text import build_text_encoder

    graph = graph_defs(model, build_text_encoder(model.cfg.text))["ground"]
    rng = np.random.default_rng(0)
    feeds = {q: _ground_feeds(graph, q, length, rng) for q in batches}
    backends: list[tuple[str, str, str, str, Callable | None]] = [
        ("PyTorch eager", "cpu", "fp32", "", lambda: _torch_ground(graph, "cpu", False))]
    cuda_reason = devices.torch_cuda_reason
    backends += [("PyTorch eager", "cuda", "fp32", cuda_reason,
                  lambda: _torch_ground(graph, "cuda", False)),
                 ("PyTorch eager + autocast", "cuda", "bf16/fp16", cuda_reason,
                  lambda: _torch_ground(graph, "cuda", True))]
    for device, reason in devices.engine_devices.items():
        precision = "fp32" if device == "cpu" else GPU_PRECISION
        runner = "TensorRT" if device == "trt-native" else "ONNX Runtime"
        backends.append((f"bundle graph ({runner})", device, precision, reason,
                         lambda d=device, p=precision: _runtime_ground(
                             Runtime(bundle, RuntimeOptions(device=d, precision=p)))))
    rows, summary, eager = [], {}, {}
    for name, device, precision, reason, make in backends:
        if reason:
            rows.append([name, device, precision, *["-"] * len(batches), f"skipped: {reason}"])
            continue
        fn = make()
        times = {q: measure(lambda f=feeds[q], fn=fn: fn(f), repeat=repeat, warmup=1)
                 for q in _batches(device, batches)}
        ran_on = getattr(fn, "ran_on", "")
        if name == "PyTorch eager":
            eager[device] = times
        ref = eager.get(device)
        ratio = (", ".join(f"{ref[q].median / t.median:.2f}x" for q, t in times.items())
                 if ref and name != "PyTorch eager" else "")
        notes = [f"ran on {ran_on}" if ran_on else "",
                 f"PyTorch eager / this: {ratio}" if ratio else ""]
        rows.append([name, device, precision,
                     *(times[q].ms() if q in times else "-" for q in batches),
                     "; ".join(n for n in notes if n)])
        summary[f"{name}|{device}|{precision}"] = {q: t.median * 1e3 for q, t in times.items()}
    return Section(f"Per-query graph, {model.cfg.grounding.hidden}-wide model, T = {length}",
                   ["backend", "device", "precision", *(f"{q} queries" for q in batches),
                    "notes"], rows,
                   "Median [p10-p90] per call including host-device copies. PyTorch eager is "
                   "the same module the bundle was exported from. CPU rows (the reference) "
                   "time one query per call only."), summary


def _batches(device: str, batches: tuple[int, ...]) -> tuple[int, ...]:
    """The CPU is the reference: one query per call keeps its rows to seconds."""
    return batches if device != "cpu" else batches[:1]


def _ground_feeds(graph, queries: int, length: int, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    from gazenlq.export.graphs import random_inputs

    feeds = random_inputs(graph, {"batch": queries, "length": length,
                                  "text_length": TEXT_TOKENS}, rng, vocab=1000)
    for spec in graph.inputs:  # full-length rows, as in a long video's windows
        if spec.name in graph.masks:
            feeds[spec.name][:] = True
    return feeds


def _runtime_ground(runtime) -> Callable[[dict[str, np.ndarray]], object]:
    def run(feeds: dict[str, np.ndarray]) -> object:
        return runtime.ground(feeds["video_emb"], feeds.get("gaze_emb"), feeds["mask"],
                              feeds["tokens"], feeds["text_mask"])
    run.ran_on = runtime.providers["ground"][0]  # what really ran, recorded in the row
    return run


def search_section(bundle: Path, store: Path, devices: Devices, batches: tuple[int, ...],
                   repeat: int) -> tuple[Section, dict]:
    """gaze-search end to end on every device: index build, then warm latency per query."""
    from gazenlq.engine import SearchEngine
    from gazenlq.engine.runtime import RuntimeOptions

    rows, summary = [], {}
    for device, reason in devices.engine_devices.items():
        precision = "fp32" if device == "cpu" else GPU_PRECISION
        if reason:
            rows.append([device, precision, "-", *["-"] * len(batches), f"skipped: {reason}"])
            continue
        engine = SearchEngine(bundle, RuntimeOptions(device=device, precision=precision))
        shutil.rmtree(store / "cache", ignore_errors=True)
        t0 = time.perf_counter()
        engine.index(store)  # builds the index: the video graph runs
        build = time.perf_counter() - t0
        times: dict[int, Timing] = {}
        for q in _batches(device, batches):
            queries = (QUERIES * 4)[:q]
            times[q] = measure(lambda qs=queries, e=engine: e.search(store, qs),
                               repeat=repeat, warmup=1)
        ran_on = sorted({p[0] for p in engine.runtime.providers.values()})
        rows.append([device, precision, round(build, 3),
                     *(f"{times[q].median / q:.4f} [{times[q].p10 / q:.4f}-"
                       f"{times[q].p90 / q:.4f}]" if q in times else "-" for q in batches),
                     f"ran on {', '.join(ran_on)}"])
        summary[device] = {"index_build_s": build,
                           **{f"s_per_query_{q}": t.median / q for q, t in times.items()}}
    return Section("Search over the video, index present after the first search",
                   ["device", "precision", "first search, building the index (s)",
                    *(f"s per query, {q} per call" for q in batches), "notes"], rows,
                   "gaze-search's engine (SearchEngine.search) end to end: text graph, "
                   "cached video embeddings, fused per-query graph, Numba Soft-NMS. "
                   "Seconds per query: median [p10-p90] of the call divided by its "
                   "queries."), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    devices = detect()
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = paper_config()
    t0 = time.perf_counter()
    bundle = random_bundle(cfg, OUT, fp16=True, trt=not devices.trt_native_reason)
    export_s = time.perf_counter() - t0
    from gazenlq.export.graphs import load_model

    model, _ = load_model(OUT / "checkpoint")
    batches = (1,) if args.quick else (1, 8)
    repeat = 3 if args.quick else 5
    ground, g_summary = ground_section(model, bundle, devices, batches, repeat)
    store = video_store(OUT, 1.0)
    searches, s_summary = search_section(bundle, store, devices, batches, repeat)
    ground.heading = f"Per-query graph, paper preset, T = {LENGTH}"
    searches.heading = "Search over a 1-hour video, paper preset (index present after the first)"
    params = sum(p.numel() for p in model.grounding.parameters())
    ground.notes += (f" Grounding model: {params / 1e6:.1f} M parameters. Export + "
                     f"validation of the bundle: {export_s:.0f} s (0 when reused).")
    path = write_result("gpu", "GPU section: paper preset on every available backend",
                        [ground, searches],
                        summary={"devices": devices.to_dict(), "ground_ms": g_summary,
                                 "search": s_summary, "parameters": params})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
