"""Grounding graph latency: onnxruntime CPU (fp32 and fp16 bundle graphs) vs PyTorch eager.

    python -m benchmarks.bench_export

The per-query ``ground`` graph of the ``small`` preset (GazeNLQ, EgoSim feature widths,
random weights: latency does not depend on them) at T = 256, 1,024 and 2,560 steps, for 1
and 8 queries of 12 tokens, one thread each (onnxruntime at ORT_ENABLE_BASIC, the level the
bundle is validated at). Writes benchmarks/results/export.json and refreshes RESULTS.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from benchmarks.common import Section, measure, write_result
from benchmarks.models import config
from gazenlq.export.fp16 import to_fp16
from gazenlq.export.graphs import graph_defs, random_inputs
from gazenlq.export.onnx_export import export_graph
from gazenlq.export.validate import OrtBackend, TorchBackend, max_abs_diff, ort_session
from gazenlq.text import TextEncoderConfig, build_text_encoder
from gazenlq.training.model import GazeNLQ

LENGTHS = (256, 1024, 2560)
QUERIES = (1, 8)
TEXT_TOKENS = 12


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = config("small", video_dim=256, gaze_dim=512)
    model = GazeNLQ(cfg).eval().requires_grad_(False)
    ground = graph_defs(model, build_text_encoder(TextEncoderConfig()))["ground"]
    rng = np.random.default_rng(0)
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        proto = export_graph(ground)
        paths = {"fp32": Path(tmp) / "ground.onnx", "fp16": Path(tmp) / "ground_fp16.onnx"}
        onnx.save(proto, paths["fp32"])
        onnx.save(to_fp16(proto), paths["fp16"])
        backends = {"torch": TorchBackend({"ground": ground}),
                    **{p: OrtBackend({"ground": ort_session(path, threads=1)})
                       for p, path in paths.items()}}
        for length in LENGTHS:
            for q in QUERIES:
                feeds = random_inputs(ground, {"batch": q, "length": length,
                                               "text_length": TEXT_TOKENS}, rng, vocab=1000)
                times = {name: measure(lambda b=b, f=feeds: b.run("ground", f), repeat=10)
                         for name, b in backends.items()}
                outs = {name: b.run("ground", feeds) for name, b in backends.items()}
                diff = {p: max(max_abs_diff(outs["torch"][o], outs[p][o],
                                            outs["torch"]["point_mask"])
                               for o in ("logits", "distances")) for p in paths}
                rows.append([length, q, times["torch"].ms(), times["fp32"].ms(),
                             times["fp16"].ms(),
                             times["torch"].median / times["fp32"].median,
                             f"{diff['fp32']:.1e}", f"{diff['fp16']:.1e}"])
                summary[f"T{length}_Q{q}"] = {**{k: t.median * 1e3 for k, t in times.items()},
                                              **{f"max_abs_diff_{p}": d
                                                 for p, d in diff.items()}}
    section = Section(
        "ground graph (small preset, GazeNLQ): PyTorch eager vs onnxruntime CPU, 1 thread",
        ["T (steps)", "queries", "PyTorch eager", "onnxruntime fp32", "onnxruntime fp16",
         "PyTorch / ORT fp32", "max abs diff fp32", "max abs diff fp16"], rows,
        "Median [p10-p90] per call of the per-query graph only (text encoder and the cached "
        "per-video graph excluded), 10 runs after 2 warm-ups. Max abs diff: largest "
        "difference from PyTorch over the valid points of both outputs (logits, distances) "
        "for the same inputs. The fp16 graph is slower than fp32 on the CPU provider: it is "
        "meant for GPU providers and TensorRT, and runs here to prove it correct.")
    path = write_result("export", "Export: grounding graph latency (onnxruntime vs PyTorch)",
                        [section], summary=summary, command="python -m benchmarks.bench_export")
    print(" | ".join(section.columns))
    for row in rows:
        print(" | ".join(str(v) if not isinstance(v, float) else f"{v:.3g}" for v in row))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
