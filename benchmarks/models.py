"""Random-weight checkpoints and bundles for the speed benchmarks (latency does not depend on
the weights, so no training run is needed; accuracy lives in docs/results.md). They record
the time grid of the stores they are meant for (EgoSim's default, Ego4D's), as trained
checkpoints do, since gaze-export refuses a checkpoint without one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gazenlq.timegrid import EGO4D, TimeGrid
from gazenlq.training.config import TrainConfig, preset
from gazenlq.training.model import GazeNLQ, with_dims

TEXT_DIM = 384  # all-MiniLM-L6-v2, the default text encoder


def config(name: str, *, video_dim: int, gaze_dim: int, variant: str = "gaze") -> TrainConfig:
    """Preset ``name`` with the given feature widths."""
    return with_dims(preset(name), video_dim=video_dim, gaze_dim=gaze_dim, text_dim=TEXT_DIM,
                     variant=variant)


def random_checkpoint(cfg: TrainConfig, path: Path, seed: int = 0, grid: TimeGrid = EGO4D,
                      score_gain: float = 1.0) -> Path:
    """A stage-2 checkpoint of ``cfg`` with seeded random weights for stores on ``grid``, as
    gaze-export reads it. ``score_gain`` scales the classification head's weights: a freshly
    initialised model scores every moment near its prior (0.01), all near-ties, while a
    comparison of backends needs moments whose scores differ."""
    from gazenlq.training import checkpoint

    torch.manual_seed(seed)
    model = GazeNLQ(cfg)
    if score_gain != 1.0:
        out = model.grounding.cls_head.out.conv
        with torch.no_grad():
            out.weight.mul_(score_gain)
    checkpoint.save(path, config={"kind": "gazenlq", "train_config": cfg.to_dict(),
                                  "epoch": 0, "metrics": {}, **checkpoint.grid_entry(grid)},
                    weights=model.state_dict())
    return path


def random_bundle(cfg: TrainConfig, out: Path, *, fp16: bool = False, trt: bool = False,
                  grid: TimeGrid = EGO4D, score_gain: float = 1.0) -> Path:
    """A validated gaze-export bundle of a random-weight ``cfg`` for stores on ``grid``
    (reused when present), with native TensorRT engines at each of its precisions when
    ``trt``."""
    from gazenlq.bundle.manifest import verify_bundle
    from gazenlq.bundle.trt import engine_dir
    from gazenlq.errors import GazeNLQError
    from gazenlq.export.exporter import export_bundle
    from gazenlq.export.tensorrt import TrtOptions

    bundle = out / "bundle"
    try:
        manifest = verify_bundle(bundle)
        same = manifest.model == json.loads(json.dumps(cfg.to_dict())) and \
            manifest.time_grid == grid
        precisions = ("fp32", "fp16") if fp16 else ("fp32",)
        if same and (not fp16 or "fp16" in manifest.graphs) and (
                not trt or all(engine_dir(bundle, p).is_dir() for p in precisions)):
            return bundle
    except (GazeNLQError, OSError):  # absent or stale: export afresh
        pass
    ckpt = random_checkpoint(cfg, out / "checkpoint", grid=grid, score_gain=score_gain)
    export_bundle(ckpt, bundle, fp16=fp16, trt=TrtOptions(fp16=fp16) if trt else None)
    return bundle
