"""What the wearer looked at (semantic gaze targets, gaze.md section 6), torch-free.

- The **looked-at file**: per video, the spans of seconds during which the wearer fixated a
  named object. EgoSim writes it (``annotations/looked_at.json``: it knows which object
  every fixation lands on); for real data (Ego4D has no such labels) a user supplies the
  same file, e.g. from the names of the objects under the gaze point in a few annotated
  videos, or from an open-vocabulary detector run on the frame crops at the gaze point.
- **Step labels**: the object a feature step looks at (:func:`step_labels`), the training
  target of the semantic head (``training.semantic``).
- **The looked-at track**: per step, the probability that the wearer looks at a queried
  noun, from the step's label embedding against the bundle's vocabulary and the noun
  (:func:`label_probs`); its runs above a threshold are the moments (:func:`ranked_spans`).
- **Metrics**: Acc@k of the gazed object (:func:`accuracy_at`) and moment recall of
  "looked at X" queries (:func:`recall_at`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazenlq.atomic import write_json_atomic
from gazenlq.errors import GazeNLQError
from gazenlq.nlq.evaluation import iou
from gazenlq.timegrid import TimeGrid

FORMAT = "gazenlq.looked-at"
VERSION = 1
FILE_NAME = "looked_at.json"
"""The looked-at file's name in an EgoSim dataset's ``annotations/``."""
MIN_COVER = 0.5
"""A step is labelled with an object fixated during at least this share of its window."""
THRESHOLD = 0.15
"""Default probability from which a step counts as looking at the queried noun: chosen on
EgoSim's val split among 0.1-0.5 (moment recall of "looked at X" queries, docs/results.md);
a step usually looks at 1 of 56 known objects, so a noun that takes 0.15 of the mass is
well ahead of the rest."""


@dataclass(frozen=True)
class LookedAt:
    """A looked-at file: the vocabulary (``objects``, in order) and per video an ``[N, 3]``
    array of fixation spans ``(start_s, end_s, object index)``."""

    objects: tuple[str, ...]
    videos: dict[str, np.ndarray]

    def spans(self, video_uid: str) -> np.ndarray:
        """The spans of ``video_uid`` (none: an empty ``[0, 3]`` array)."""
        return self.videos.get(video_uid, np.zeros((0, 3)))


def write_looked_at(path: str | os.PathLike, objects: Sequence[str],
                    videos: Mapping[str, Sequence[tuple[float, float, int]]]) -> None:
    """Write a looked-at file atomically; spans name their object (``objects[index]``)."""
    write_json_atomic(Path(path), {
        "format": FORMAT, "version": VERSION, "objects": list(objects),
        "videos": [{"video_uid": uid, "fixations": [[round(float(s), 4), round(float(e), 4),
                                                     objects[int(o)]] for s, e, o in spans]}
                   for uid, spans in videos.items()]})


def read_looked_at(path: str | os.PathLike) -> LookedAt:
    """Parse and check a looked-at file; any problem is one line naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GazeNLQError(f"{path}: unreadable looked-at file ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise GazeNLQError(f"{path}: not a looked-at file (format is not {FORMAT!r})")
    if raw.get("version") != VERSION:
        raise GazeNLQError(f"{path}: looked-at format version {raw.get('version')!r}, this "
                           f"gazenlq reads {VERSION}")
    names = raw.get("objects", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise GazeNLQError(f"{path}: 'objects' must be a list of object names")
    index = {n: i for i, n in enumerate(dict.fromkeys(names))}
    videos: dict[str, np.ndarray] = {}
    for v in raw.get("videos", []):
        uid = v.get("video_uid") if isinstance(v, dict) else None
        fixations = v.get("fixations") if isinstance(v, dict) else None
        if not isinstance(uid, str) or not isinstance(fixations, list):
            raise GazeNLQError(f"{path}: every video needs a 'video_uid' and a 'fixations' list")
        rows = []
        for f in fixations:
            ok = isinstance(f, list) and len(f) == 3 and isinstance(f[2], str) and all(
                isinstance(x, (int, float)) for x in f[:2])
            if not ok or not 0 <= f[0] < f[1]:
                raise GazeNLQError(f"{path}: video {uid}: fixation {f!r} is not "
                                   "[start_sec, end_sec, object] with 0 <= start < end")
            rows.append((f[0], f[1], index.setdefault(f[2], len(index))))
        videos[uid] = np.array(rows, np.float64).reshape(-1, 3)
    return LookedAt(tuple(index), videos)


def step_labels(spans: np.ndarray, grid: TimeGrid, num_steps: int, num_objects: int
                ) -> np.ndarray:
    """``[num_steps]`` int32: per step the object fixated during the largest share of its
    window, when that share is at least :data:`MIN_COVER`, else -1 (no label: saccades,
    fixations on nothing, steps split between objects)."""
    if num_objects == 0:
        return np.full(num_steps, -1, np.int32)
    cover = np.zeros((num_steps, num_objects))
    window, per_step = grid.window / grid.fps, grid.seconds_per_step
    for s, e, o in spans:  # steps whose window [i * per_step, + window) meets [s, e)
        first = max(0, int(np.floor((s - window) / per_step)))
        last = min(num_steps, int(np.ceil(e / per_step)) + 1)
        if first >= last:
            continue
        a, b = grid.step_bounds_s(np.arange(first, last))
        cover[first:last, int(o)] += np.maximum(0.0, np.minimum(b, e) - np.maximum(a, s))
    best = cover.argmax(1)
    keep = cover[np.arange(num_steps), best] >= MIN_COVER * window
    return np.where(keep, best, -1).astype(np.int32)


def label_probs(step_emb: np.ndarray, classes: np.ndarray, scale: float) -> np.ndarray:
    """``[T, C]`` softmax over ``classes`` (unit label embeddings ``[C, D]``, e.g. the
    vocabulary plus a queried noun) of each step's cosine similarity, times ``scale`` (the
    head's learned inverse temperature). Steps whose embedding is zero (padding) get 0."""
    step_emb = np.asarray(step_emb, np.float32)
    logits = scale * (step_emb @ np.asarray(classes, np.float32).T)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p * (np.abs(step_emb).sum(1, keepdims=True) > 0)


def runs(hits: np.ndarray) -> np.ndarray:
    """``[N, 2]`` int64 ``[start, stop)`` of the runs of consecutive True steps."""
    h = np.concatenate([[False], np.asarray(hits, bool), [False]])
    edges = np.flatnonzero(h[1:] != h[:-1])
    return edges.reshape(-1, 2).astype(np.int64)


def ranked_spans(prob: np.ndarray, threshold: float = THRESHOLD
                 ) -> list[tuple[tuple[int, int], float]]:
    """The runs of steps whose probability reaches ``threshold`` - consecutive looked-at
    steps merged into one span - ranked by their mean probability (longer first on ties):
    ``[((start, stop), score)]``, ``stop`` exclusive."""
    prob = np.asarray(prob, np.float64)
    found = [((int(s), int(e)), float(prob[s:e].mean())) for s, e in runs(prob >= threshold)]
    found.sort(key=lambda r: (-r[1], r[0][0] - r[0][1], r[0][0]))
    return found


def span_segments(spans: np.ndarray) -> np.ndarray:
    """Step runs ``[start, stop)`` -> continuous step segments (a run covers its steps'
    centres +- half a step), for ``TimeGrid.segments_to_seconds``."""
    return np.asarray(spans, np.float64).reshape(-1, 2) - 0.5


def accuracy_at(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of rows whose label is among the ``k`` highest of its ``scores [N, C]``."""
    if not len(labels):
        return float("nan")
    top = np.argsort(-np.asarray(scores), axis=1)[:, :k]
    return float(100.0 * (top == np.asarray(labels)[:, None]).any(1).mean())


def recall_at(predicted: np.ndarray, truth: np.ndarray, k: int, threshold: float) -> bool:
    """Whether one of the first ``k`` predicted windows ``[N, 2]`` (seconds, ranked) has IoU
    of at least ``threshold`` with one of the true windows ``[M, 2]``."""
    p = np.asarray(predicted, np.float64).reshape(-1, 2)[:k]
    t = np.asarray(truth, np.float64).reshape(-1, 2)
    if not len(p) or not len(t):
        return False
    return bool((np.nan_to_num(iou(p[:, None], t[None])) >= threshold).any())
