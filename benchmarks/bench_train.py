"""Training throughput: optimizer steps per second of stage 1 and stage 2, per preset and device.

    python -m benchmarks.bench_train [--quick] [--device auto|cpu|cuda]

Each case times the real training step (``gazenlq.training.trainer.train_step``: losses
under autocast, backward, clipping, AdamW) on batches shaped like the trainer's: stage 2
with ``windows`` windows of ``T`` steps and ``queries`` queries per window (one video pass
per window, one grounding pass per query), stage 1 with 16 windows of 64 steps. Data
loading is excluded (the store's read speed is in bench_store). The small preset runs on
the CPU; the paper preset (hidden 384, T = 2,560) runs where CUDA is present, in mixed
precision, and once on the CPU as the reference. Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from benchmarks.common import Section, measure, write_result
from benchmarks.devices import detect
from benchmarks.models import config
from gazenlq.training.config import TrainConfig
from gazenlq.training.device import Precision, resolve_device, to_device
from gazenlq.training.model import GazeNLQ
from gazenlq.training.run import grounding_step
from gazenlq.training.targets import PositiveNormaliser
from gazenlq.training.trainer import optimizer, train_step

TEXT_TOKENS = 12
# EgoSim's widths for the small preset; Ego4D's (InternVideo + EgoVLP, Omnivore) for paper.
DIMS = {"small": (256, 512), "paper": (2304, 1536)}


@dataclass(frozen=True)
class Case:
    preset: str
    device: str
    length: int
    windows: int
    queries: int
    repeat: int


def grounding_batch(cfg: TrainConfig, case: Case, device: torch.device,
                    gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A collated stage-2 batch (the keys GroundingCollate produces), random contents."""
    g, w, t, q = cfg.grounding, case.windows, case.length, case.queries
    n = w * q
    span = min(32, t // 4)  # answers of 1-32 steps (0.5-17 s), as most of Ego4D's
    starts = torch.randint(0, t - span, (n,), generator=gen).float()
    lengths = 1 + (span - 1) * torch.rand(n, generator=gen)
    batch = {"video": torch.randn(w, t, g.video_dim, generator=gen),
             "mask": torch.ones(w, t, dtype=torch.bool),
             "clip_of": torch.arange(w).repeat_interleave(q),
             "answers": torch.stack([starts, starts + lengths], 1),
             "tokens": torch.randn(n, TEXT_TOKENS, g.text_dim, generator=gen),
             "text_mask": torch.ones(n, TEXT_TOKENS, dtype=torch.bool)}
    if g.gaze != "none":
        batch["gaze"] = torch.randn(w, t, cfg.estimator.in_dim, generator=gen)
    return to_device(batch, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: Case) -> dict:
    device = resolve_device(case.device)
    video_dim, gaze_dim = DIMS[case.preset]
    cfg = config(case.preset, video_dim=video_dim, gaze_dim=gaze_dim)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = GazeNLQ(cfg).to(device).train()
    amp = Precision.for_device(device)
    norm = PositiveNormaliser()
    opt = optimizer(model, cfg.stage2)
    batch = grounding_batch(cfg, case, device, gen)

    def stage2() -> None:
        train_step(model, batch, lambda m, b: grounding_step(m, b, norm), opt, amp,
                   cfg.stage2.clip_grad)
        _sync(device)

    t2 = measure(stage2, repeat=case.repeat, warmup=1)
    est = model.estimator.train().requires_grad_(True)
    opt1 = optimizer(est, cfg.stage1)
    w = cfg.stage1_window
    s1 = {"feats": torch.randn(16, w, gaze_dim, generator=gen),
          "maps": torch.rand(16, w, cfg.estimator.map_size, cfg.estimator.map_size,
                             generator=gen),
          "valid": torch.ones(16, w, dtype=torch.bool)}
    s1 = to_device(s1, device)

    def stage1() -> None:
        train_step(est, s1, lambda m, b: m.loss(b["feats"], b["maps"], b["valid"]), opt1, amp,
                   cfg.stage1.clip_grad)
        _sync(device)

    t1 = measure(stage1, repeat=case.repeat, warmup=1)
    return {"stage2": t2, "stage1": t1, "precision": amp.name,
            "parameters": sum(p.numel() for p in model.grounding.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = ap.parse_args()
    devices = detect()
    cases = [Case("small", "cpu", 256, 4, 3, 5 if args.quick else 15),
             Case("paper", "cpu", 2560, 1, 1, 2 if args.quick else 3)]
    skipped = []
    if args.device != "cpu":
        if devices.torch_cuda:
            cases += [Case("small", "cuda", 256, 4, 3, 30),
                      Case("paper", "cuda", 2560, 8, 1, 20)]
        else:
            skipped.append(["paper / small", "cuda", f"skipped: {devices.torch_cuda_reason}"])
    rows, summary = [], {}
    for case in cases:
        r = run_case(case)
        queries = case.windows * case.queries
        rows.append([case.preset, case.device, r["precision"], f"{r['parameters'] / 1e6:.1f} M",
                     f"{case.windows} x {case.length} steps, {queries} queries",
                     r["stage2"].ms(), round(queries / r["stage2"].median, 1),
                     r["stage1"].ms(), round(16 * 64 / r["stage1"].median)])
        summary[f"{case.preset}_{case.device}"] = {
            "stage2_ms": r["stage2"].median * 1e3, "stage1_ms": r["stage1"].median * 1e3,
            "queries_per_s": queries / r["stage2"].median}
        print(rows[-1], flush=True)
    rows += [[p, d, "-", "-", "-", why, "-", "-", "-"] for p, d, why in skipped]
    section = Section(
        "Training steps (forward + backward + AdamW), random batches of the trainer's shapes",
        ["preset", "device", "precision", "grounding params", "stage-2 batch",
         "stage-2 step", "stage-2 queries/s", "stage-1 step (16 x 64 steps)",
         "stage-1 feature steps/s"], rows,
        "Median [p10-p90] per optimizer step after one warm-up step. Stage-2 queries/s is "
        "the training throughput in queries (each query is one grounding pass over its "
        "window). The paper preset on the CPU is the reference for the GPU rows; EgoSim's "
        "full small-preset epochs (with data loading and validation) are in docs/results.md.")
    path = write_result("train", "Training throughput (gaze-train's step)", [section],
                        summary=summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
