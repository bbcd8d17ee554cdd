"""Probes on EgoSim, which knows what every step shows (docs/synthetic-data.md).

Does the gaze say *what* is being handled? For every interaction of a split's eye-tracked
sessions that shows two or more objects, the gaze-estimator cell features of the
interaction's steps are pooled over the 4 x 4 cells with some cell weights, and compared
(cosine) with EgoSim's hidden cell direction of every visible object. A hit is when the
handled object is the closest. Weights: ``uniform`` (what pooling without gaze gives),
``true`` (the ground-truth gaze maps) and ``predicted`` (a stage-1 estimator's maps, as in
the gaze tokens of ``GazeEstimator.gaze_tokens``).

Does a grounding model's step embedding keep what the features say? ``concept_aucs``: linear
probes of the visible objects and the verb of each step, from the raw video features and
from the embedding. And where do its top-1 answers land? ``failure_types``.

``python -m tools.probe DATA [--estimator CKPT] [--grounding CKPT] [--predictions FILE]
[--split val]`` (from the repository root; needs the ``train`` extra)
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gazenlq.kernels import iou_matrix
from gazenlq.store import GAZE_INPUT, GAZE_MAPS, VIDEO, FeatureStore
from gazenlq.synth.config import GRID_SIDE, EgoSimConfig
from gazenlq.synth.dataset import MANIFEST, plan_sessions, session_store, session_timeline
from gazenlq.synth.world import OBJECTS, VERBS, World
from gazenlq.training import checkpoint
from gazenlq.training.config import TrainConfig
from gazenlq.training.estimator import GazeEstimator, cell_shares
from gazenlq.training.grounding import GroundingModel
from gazenlq.training.model import GazeNLQ


def _config(data: Path) -> EgoSimConfig:
    return EgoSimConfig.from_dict(json.loads((data / MANIFEST).read_text())["config"])


def cell_weights(maps: torch.Tensor) -> np.ndarray:
    """``[T, S, S]`` gaze maps -> ``[T, cells]`` weights: each map's share in each cell, as
    the gaze tokens pool them (an empty map, e.g. untracked, gives zeros)."""
    w = cell_shares(maps.flatten(1).double(), GRID_SIDE)
    return (w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)).numpy()


def identification_rates(data: Path, estimator: GazeEstimator | None = None,
                         split: str = "val") -> dict[str, float | int]:
    """Hit rates of each weighting (``predicted`` only with an estimator) and the number of
    interactions scored."""
    cfg = _config(data)
    world = World.build(cfg.seed, cfg.video_dim, cfg.cell_dim, cfg.difficulty.text_align)
    modes = ["uniform", "true"] + (["predicted"] if estimator is not None else [])
    hits: dict[str, list[bool]] = {m: [] for m in modes}
    for plan in plan_sessions(cfg):
        if plan.split != split or not plan.has_gaze:
            continue
        tl = session_timeline(cfg, plan)
        store = FeatureStore.open(session_store(data, plan))
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
            visible = [int(o) for o in tl.scene_objects[tl.scene_at(e.start_s)] if o >= 0]
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


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Probability that a positive scores above a negative (rank statistic; nan if a class
    is empty)."""
    pos = label > 0
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def concept_aucs(data: Path, grounding: GroundingModel | None = None, split: str = "val",
                 sessions: int = 16, max_steps: int = 2048) -> dict[str, dict[str, float]]:
    """Mean ROC AUC of ridge probes that read, per step, which objects are visible and which
    verb is done (or none), fit on the first half of ``sessions`` of ``split`` and scored
    on the second: from the raw video features and, given a model, from its step embedding
    (``GroundingModel.video_embedding``)."""
    cfg = _config(data)
    plans = [p for p in plan_sessions(cfg) if p.split == split][:sessions]
    if len(plans) < 2:
        raise ValueError(f"{data}: the {split} split needs 2 or more sessions to probe")
    feats: dict[str, list[np.ndarray]] = {"raw": []} | ({"embedding": []} if grounding else {})
    labels: dict[str, list[np.ndarray]] = {"objects": [], "verbs": []}
    for plan in plans:
        tl = session_timeline(cfg, plan)
        video = FeatureStore.open(session_store(data, plan)).read(VIDEO, 0, max_steps)
        n = len(video)
        first, last = cfg.grid.step_bounds_s(np.arange(n))
        scene = tl.scene_at((first + last) / 2)
        shown = tl.scene_objects[scene]
        step, slot = np.nonzero(shown >= 0)
        objects = np.zeros((n, len(OBJECTS)))
        objects[step, shown[step, slot]] = 1
        verb = np.where(tl.scene_verb[scene] >= 0, tl.scene_verb[scene], len(VERBS))
        labels["objects"].append(objects)
        labels["verbs"].append(np.eye(len(VERBS) + 1)[verb])
        feats["raw"].append(video.astype(np.float64))
        if grounding is not None:
            with torch.no_grad():
                emb = grounding.video_embedding(torch.from_numpy(video.astype(np.float32))[None],
                                                torch.ones(1, n, dtype=torch.bool))[0]
            feats["embedding"].append(emb.double().numpy())
    half = len(plans) // 2
    out: dict[str, dict[str, float]] = {}
    for name, xs in feats.items():
        x_fit, x_test = np.concatenate(xs[:half]), np.concatenate(xs[half:])
        mean = x_fit.mean(0)
        x_fit, x_test = x_fit - mean, x_test - mean
        gram = x_fit.T @ x_fit
        ridge = np.linalg.solve(gram + 1e-3 * np.trace(gram) / len(gram) * np.eye(len(gram)),
                                x_fit.T)
        out[name] = {}
        for kind, ys in labels.items():
            y_fit, y_test = np.concatenate(ys[:half]), np.concatenate(ys[half:])
            scores = x_test @ (ridge @ (y_fit - y_fit.mean(0)))
            out[name][kind] = float(np.nanmean([roc_auc(scores[:, k], y_test[:, k])
                                                for k in range(y_test.shape[1])]))
    return out


FAILURES = ("hit", "an interaction showing the object", "the answer's verb, object not shown",
            "another interaction", "no interaction")


def failure_types(data: Path, predictions: Path, split: str = "test") -> dict[str, float]:
    """Where the top-1 windows of an Ego4D NLQ submission on an EgoSim split land: shares
    of ``FAILURES`` (a miss is put on the interaction it overlaps most, IoU >= 0.3)."""
    cfg = _config(data)
    plans = {p.video_uid: p for p in plan_sessions(cfg) if p.split == split}
    ann = json.loads((data / "annotations" / f"nlq_{split}.json").read_text())
    clips, queries = {}, {}
    for video in ann["videos"]:
        tl = session_timeline(cfg, plans[video["video_uid"]])
        shown = [set(tl.scene_objects[tl.scene_at(e.start_s)].tolist()) for e in tl.events]
        for clip in video["clips"]:
            clips[clip["clip_uid"]] = (clip["video_start_sec"], tl.events, shown)
            for a in clip["annotations"]:
                for i, q in enumerate(a["language_queries"]):
                    queries[(clip["clip_uid"], a["annotation_uid"], i)] = q

    counts: Counter[str] = Counter()
    for r in json.loads(predictions.read_text())["results"]:
        q = queries[(r["clip_uid"], r["annotation_uid"], r["query_idx"])]
        start, events, shown = clips[r["clip_uid"]]
        top = np.array([r["predicted_times"][0]]) + start
        answer_window = np.array([[q["video_start_sec"], q["video_end_sec"]]])
        if iou_matrix(top, answer_window)[0, 0] >= 0.3:
            counts[FAILURES[0]] += 1
            continue
        windows = np.array([[e.start_s, e.end_s] for e in events])
        # the annotator's window overlaps its event (EgoSim's `boundary` knob), most of all
        answer = events[int(np.argmax(iou_matrix(answer_window, windows)[0]))]
        overlaps = iou_matrix(top, windows)[0]
        j = int(np.argmax(overlaps))
        if overlaps[j] < 0.3:
            counts[FAILURES[4]] += 1
        elif answer.obj >= 0 and answer.obj in shown[j]:
            counts[FAILURES[1]] += 1
        else:
            counts[FAILURES[2] if events[j].verb == answer.verb else FAILURES[3]] += 1
    total = sum(counts.values())
    return {k: counts[k] / total for k in FAILURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="gaze-synth dataset directory")
    parser.add_argument("--estimator", type=Path, help="stage-1 checkpoint directory")
    parser.add_argument("--grounding", type=Path, help="stage-2 checkpoint directory: "
                        "probe its step embedding too")
    parser.add_argument("--predictions", type=Path, help="Ego4D NLQ submission JSON on "
                        "the split: its top-1 failure types")
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    est = None
    if args.estimator:
        cfg = TrainConfig.from_dict(checkpoint.load_config(args.estimator)["train_config"])
        est = GazeEstimator(cfg.estimator)
        est.load_state_dict(checkpoint.load_weights(args.estimator))
        est.eval()
    out: dict[str, object] = {"gaze": identification_rates(args.data, est, args.split)}
    if args.grounding:
        cfg = TrainConfig.from_dict(checkpoint.load_config(args.grounding)["train_config"])
        model = GazeNLQ(cfg)
        model.load_state_dict(checkpoint.load_weights(args.grounding))
        out["concept_auc"] = concept_aucs(args.data, model.grounding.eval(), args.split)
    if args.predictions:
        out["failures"] = failure_types(args.data, args.predictions, args.split)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
