"""Does the gaze say *what* is being handled? A probe on EgoSim (docs/synthetic-data.md).

For every interaction of a split's eye-tracked sessions that shows two or more objects, the
gaze-estimator cell features of the interaction's steps are pooled over the 4 x 4 cells
with some cell weights, and compared (cosine) with EgoSim's hidden cell direction of every
visible object. A hit is when the handled object is the closest. Weights: ``uniform``
(what pooling without gaze gives), ``true`` (the ground-truth gaze maps) and ``predicted``
(a stage-1 estimator's maps, as in the gaze tokens of ``GazeEstimator.gaze_tokens``).

``python -m gazenlq.training.probe DATA [--estimator CKPT] [--split val]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gazenlq.store import GAZE_INPUT, GAZE_MAPS, FeatureStore
from gazenlq.synth.config import GRID_SIDE, EgoSimConfig
from gazenlq.synth.dataset import MANIFEST, plan_sessions, session_timeline, store_path
from gazenlq.synth.world import World
from gazenlq.training import checkpoint
from gazenlq.training.config import TrainConfig
from gazenlq.training.estimator import GazeEstimator, cell_shares


def cell_weights(maps: torch.Tensor) -> np.ndarray:
    """``[T, S, S]`` gaze maps -> ``[T, cells]`` weights: each map's share in each cell, as
    the gaze tokens pool them (an empty map, e.g. untracked, gives zeros)."""
    w = cell_shares(maps.flatten(1).double(), GRID_SIDE)
    return (w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)).numpy()


def identification_rates(data: Path, estimator: GazeEstimator | None = None,
                         split: str = "val") -> dict[str, float | int]:
    """Hit rates of each weighting (``predicted`` only with an estimator) and the number of
    interactions scored."""
    cfg = EgoSimConfig.from_dict(json.loads((data / MANIFEST).read_text())["config"])
    world = World.build(cfg.seed, cfg.video_dim, cfg.cell_dim, cfg.difficulty.text_align)
    modes = ["uniform", "true"] + (["predicted"] if estimator is not None else [])
    hits: dict[str, list[bool]] = {m: [] for m in modes}
    for plan in plan_sessions(cfg):
        if plan.split != split or not plan.has_gaze:
            continue
        tl = session_timeline(cfg, plan)
        store = FeatureStore.open(store_path(data, plan))
        n = store.num_steps
        cells = store.read(GAZE_INPUT, 0, n).astype(np.float32).reshape(
            n, GRID_SIDE * GRID_SIDE, cfg.cell_dim)
        weights = {"uniform": np.full((n, GRID_SIDE * GRID_SIDE), 1 / GRID_SIDE**2),
                   "true": cell_weights(torch.from_numpy(np.nan_to_num(
                       store.read(GAZE_MAPS, 0, n))))}
        if estimator is not None:
            with torch.no_grad():
                maps = estimator.predict_maps(torch.from_numpy(cells.reshape(1, n, -1)),
                                              torch.ones(1, n, dtype=torch.bool))[0]
            weights["predicted"] = cell_weights(maps)
        first, last = cfg.grid.step_bounds_s(np.arange(n))
        for e in tl.events:
            scene = int(np.searchsorted(tl.scene_start, e.start_s + 1e-9)) - 1
            visible = [int(o) for o in tl.scene_objects[scene] if o >= 0]
            steps = np.flatnonzero((first >= e.start_s) & (last <= e.end_s))
            if e.obj < 0 or len(visible) < 2 or not len(steps):
                continue
            for mode in modes:
                pooled = np.einsum("tc,tcd->d", weights[mode][steps], cells[steps])
                sims = world.cell_object[visible] @ (pooled / np.linalg.norm(pooled))
                hits[mode].append(bool(np.argmax(sims) == 0))  # slot 0: the handled one
    out: dict[str, float | int] = {m: float(np.mean(v)) if v else float("nan")
                                   for m, v in hits.items()}
    out["interactions"] = len(hits["uniform"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="gaze-synth dataset directory")
    parser.add_argument("--estimator", type=Path, help="stage-1 checkpoint directory")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    est = None
    if args.estimator:
        cfg = TrainConfig.from_dict(checkpoint.load_config(args.estimator)["train_config"])
        est = GazeEstimator(cfg.estimator)
        est.load_state_dict(checkpoint.load_weights(args.estimator))
        est.eval()
    print(json.dumps(identification_rates(args.data, est, args.split)))


if __name__ == "__main__":
    main()
