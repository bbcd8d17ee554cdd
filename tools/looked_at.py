"""Semantic gaze targets on EgoSim: how well a bundle's looked-at head says what the wearer
looked at, against two baselines (docs/results.md, 'What the wearer looked at').

On a split's sessions (every step EgoSim labels: fixated by one object for at least half of
its window, ``gaze.looked_at.step_labels``):

- **Acc@1 / Acc@3** of the gazed object over the vocabulary: the bundle's per-step label
  embeddings (``SearchEngine.label_embeddings``, the public search path) against the noun
  embeddings of every object name;
- the **prior** baseline: the training split's most frequent objects, for every step;
- the **gaze-map read-out** (no semantic head): the object nearest to the peak of a stage-1
  estimator's predicted gaze map, among the objects EgoSim shows at that step and at their
  true image positions (an oracle detector: what reading the label off the gaze map can do
  at best);
- **moment retrieval** of "looked at X" queries: for every (session, object it fixated), the
  head's ranked moments (``SearchEngine.looked_at`` in that session) against the merged
  fixation spans of X, R1 / R5 at IoU 0.3 (and the gaze-map read-out's runs, ranked by
  length, for comparison).

``python -m tools.looked_at DATA --bundle BUNDLE [--estimator RUN/stage1/best]
[--split test] [--cache-dir DIR] [--threshold P]`` (from the repository root; the read-out needs the
``train`` extra)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gazenlq.engine import SearchEngine
from gazenlq.gaze.looked_at import (
    FILE_NAME,
    THRESHOLD,
    accuracy_at,
    ranked_spans,
    read_looked_at,
    recall_at,
    span_segments,
    step_labels,
)
from gazenlq.store import GAZE_INPUT, FeatureStore
from gazenlq.synth.config import EgoSimConfig
from gazenlq.synth.dataset import MANIFEST, plan_sessions, session_store, session_timeline
from gazenlq.synth.timeline import MAX_VISIBLE

IOU = 0.3


def _config(data: Path) -> EgoSimConfig:
    return EgoSimConfig.from_dict(json.loads((data / MANIFEST).read_text())["config"])


def _estimator(path: Path):
    from gazenlq.training import checkpoint
    from gazenlq.training.config import TrainConfig
    from gazenlq.training.estimator import GazeEstimator

    cfg = TrainConfig.from_dict(checkpoint.load_config(path)["train_config"])
    est = GazeEstimator(cfg.estimator)
    est.load_state_dict(checkpoint.load_weights(path))
    return est.eval()


def readout_scores(estimator, store: FeatureStore, tl, objects: int) -> np.ndarray:
    """``[T, objects]``: minus the distance of each visible object (at its true position in
    the step's middle scene) from the peak of the predicted gaze map; -inf when not shown."""
    import torch

    feats = torch.from_numpy(store.read(GAZE_INPUT, 0, store.num_steps).astype(np.float32))
    with torch.no_grad():
        maps = estimator.predict_maps(feats[None], torch.ones(1, len(feats), dtype=torch.bool))
    maps = maps[0].numpy()
    side = maps.shape[-1]
    peak = maps.reshape(len(maps), -1).argmax(1)
    xy = np.stack([(peak % side + 0.5) / side, (peak // side + 0.5) / side], 1)
    grid = store.info.grid
    scene = tl.scene_at(grid.to_seconds(np.arange(store.num_steps)))
    ids, pos = tl.scene_objects[scene], tl.scene_pos[scene]  # [T, K], [T, K, 2]
    dist = np.hypot(*(pos - xy[:, None]).transpose(2, 0, 1))
    scores = np.full((store.num_steps, objects), -np.inf)
    rows = np.repeat(np.arange(store.num_steps), MAX_VISIBLE).reshape(-1, MAX_VISIBLE)
    ok = ids >= 0
    scores[rows[ok], ids[ok]] = -dist[ok]
    return scores


def evaluate(data: Path, bundle: Path, estimator: Path | None, split: str,
             cache_dir: Path | None, threshold: float = THRESHOLD) -> dict:
    t0 = time.perf_counter()
    cfg = _config(data)
    looked = read_looked_at(data / "annotations" / FILE_NAME)
    names = list(looked.objects)
    engine = SearchEngine.from_bundle(bundle, cache_dir=None if cache_dir is None
                                      else str(cache_dir))
    nouns = engine.noun_embeddings(names)
    est = _estimator(estimator) if estimator else None
    plans = plan_sessions(cfg)
    counts = np.zeros(len(names))
    head, truth, readout = [], [], []
    hits: dict[str, list[bool]] = {k: [] for k in ("R1", "R5", "readout_R1", "readout_R5")}
    for plan in plans:
        path = session_store(data, plan)
        store = FeatureStore.open(path)
        spans = looked.spans(plan.video_uid)
        labels = step_labels(spans, store.info.grid, store.num_steps, len(names))
        if plan.split == "train":
            counts += np.bincount(labels[labels >= 0], minlength=len(names))
        if plan.split != split:
            continue
        keep = labels >= 0
        emb = engine.label_embeddings(path)
        head.append((emb @ nouns.T)[keep])
        truth.append(labels[keep])
        scores = None
        if est is not None:
            scores = readout_scores(est, store, session_timeline(cfg, plan), len(names))
            readout.append(scores[keep])
        present = sorted({int(o) for o in spans[:, 2]})
        found = engine.looked_at(path, [names[o] for o in present], top_k=5,
                                 threshold=threshold)
        for o, result in zip(present, found):
            gt = spans[spans[:, 2] == o, :2]
            got = np.array([[m.start_s, m.end_s] for m in result.moments]).reshape(-1, 2)
            hits["R1"].append(recall_at(got, gt, 1, IOU))
            hits["R5"].append(recall_at(got, gt, 5, IOU))
            if scores is not None:
                track = (scores.argmax(1) == o) & np.isfinite(scores.max(1))
                runs = [s for s, _ in ranked_spans(track.astype(float))]
                secs = store.info.grid.segments_to_seconds(span_segments(runs),
                                                           store.info.duration_s)
                secs = secs[np.argsort(-(secs[:, 1] - secs[:, 0]), kind="stable")]
                hits["readout_R1"].append(recall_at(secs, gt, 1, IOU))
                hits["readout_R5"].append(recall_at(secs, gt, 5, IOU))
    head_s, labels = np.concatenate(head), np.concatenate(truth)
    prior = np.broadcast_to(counts, (len(labels), len(names)))
    out = {"split": split, "threshold": threshold, "steps": len(labels), "queries": len(hits["R1"]),
           "vocabulary": len(names),
           "head": {"acc1": accuracy_at(head_s, labels, 1), "acc3": accuracy_at(head_s, labels, 3),
                    "R1@0.3": 100 * float(np.mean(hits["R1"])),
                    "R5@0.3": 100 * float(np.mean(hits["R5"]))},
           "prior": {"acc1": accuracy_at(prior, labels, 1), "acc3": accuracy_at(prior, labels, 3)}}
    if readout:
        r = np.concatenate(readout)
        out["gaze_map_readout"] = {"acc1": accuracy_at(r, labels, 1),
                                   "acc3": accuracy_at(r, labels, 3),
                                   "R1@0.3": 100 * float(np.mean(hits["readout_R1"])),
                                   "R5@0.3": 100 * float(np.mean(hits["readout_R5"]))}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="gaze-synth dataset directory")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle with a looked-at "
                        "head (gaze-export of a gaze-train --looked-at run)")
    parser.add_argument("--estimator", type=Path, help="stage-1 checkpoint: the gaze-map "
                        "read-out baseline")
    parser.add_argument("--split", default="test")
    parser.add_argument("--cache-dir", type=Path, help="where the search index is kept")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="looked-at probability from which a step is a hit")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.data, args.bundle, args.estimator, args.split,
                              args.cache_dir, args.threshold), indent=1))


if __name__ == "__main__":
    main()
