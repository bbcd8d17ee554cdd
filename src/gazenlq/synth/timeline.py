"""A session's hidden story: clips, place visits, scenes, interactions and eye fixations.

Everything here is in seconds of the session's video; rendering to features happens in
render.py. Statistics are calibrated to Ego4D NLQ v2 val (docs/synthetic-data.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gazenlq.synth.config import EgoSimConfig
from gazenlq.synth.world import (
    CONTAINERS,
    OBJECT_INDEX,
    OBJECTS,
    PEOPLE,
    PLACES,
    VERB_INDEX,
    verbs_for,
)

CLIP_S = 480.0
VERB_WEIGHT = {"put": 3.0, "put_in": 2.5, "take": 1.5, "open": 1.5, "close": 1.5,
               "receive": 0.6}
MAX_VISIBLE = 12
ANSWER_MEDIAN_S = 4.0
# log-space spreads: p5 0.8 s, p95 ~40 s once queries have picked their interactions
ANSWER_SIGMA_LOW, ANSWER_SIGMA_HIGH = 0.98, 1.47


@dataclass(frozen=True)
class Event:
    """One interaction: ``verb`` on object ``obj`` (``target``: container, ``person``: who)."""

    start_s: float
    end_s: float
    verb: str
    obj: int
    target: int
    person: int
    place: int


@dataclass
class Timeline:
    """A session: its clips and, as parallel arrays, its scenes and fixations."""

    duration_s: float
    clips: list[tuple[float, float]]
    events: list[Event]
    scene_start: np.ndarray  # [S] seconds, sorted; scene s lasts until scene_start[s + 1]
    scene_place: np.ndarray  # [S]
    scene_verb: np.ndarray  # [S], -1 when idle
    scene_person: np.ndarray  # [S], -1 when nobody is there
    scene_objects: np.ndarray  # [S, MAX_VISIBLE] object ids, -1 padded; slot 0 = handled
    scene_handled: np.ndarray  # [S] bool: slot 0 is being handled
    scene_pos: np.ndarray  # [S, MAX_VISIBLE, 2] image (x, y) in [0, 1]
    fix_start: np.ndarray  # [F] seconds, sorted
    fix_xy: np.ndarray  # [F, 2]
    fix_obj: np.ndarray  # [F] the object each fixation lands on, -1: none
    untracked: np.ndarray  # [U, 2] intervals in seconds

    def scene_at(self, seconds: float | np.ndarray) -> np.ndarray:
        """Index of the scene showing at ``seconds`` (a scalar or an array of times)."""
        scene = np.searchsorted(self.scene_start, seconds, side="right") - 1
        return np.clip(scene, 0, len(self.scene_start) - 1)


def looked_at_spans(tl: Timeline) -> list[tuple[float, float, int]]:
    """What the wearer looked at: ``(start_s, end_s, object)`` for every run of consecutive
    fixations on one object (a fixation lasts until the next one starts; fixations on no
    object are left out)."""
    ends = np.append(tl.fix_start[1:], tl.duration_s)
    spans: list[tuple[float, float, int]] = []
    for s, e, o in zip(tl.fix_start, ends, tl.fix_obj):
        e = min(float(e), tl.duration_s)
        if o < 0 or e <= s:
            continue
        if spans and spans[-1][2] == o and spans[-1][1] >= s:
            spans[-1] = (spans[-1][0], e, int(o))
        else:
            spans.append((float(s), e, int(o)))
    return spans


def answer_duration(rng: np.random.Generator) -> float:
    """Interaction length: split log-normal around 4 s (Ego4D answer windows)."""
    z = rng.standard_normal()
    sigma = ANSWER_SIGMA_LOW if z < 0 else ANSWER_SIGMA_HIGH
    return float(np.clip(ANSWER_MEDIAN_S * np.exp(sigma * z), 0.25, 150.0))


def clip_length(rng: np.random.Generator) -> float:
    """Ego4D NLQ clip length: mostly exactly 8 minutes, a short and a long tail."""
    u = rng.random()
    if u < 0.70:
        return CLIP_S + float(rng.uniform(-0.05, 0.05))
    if u < 0.82:
        return float(rng.uniform(250.0, CLIP_S))
    if u < 0.90:
        return float(rng.uniform(CLIP_S, 900.0))
    return float(rng.uniform(1000.0, 1200.0))


def layout_clips(cfg: EgoSimConfig, rng: np.random.Generator) -> tuple[float, list]:
    """Session duration and its annotated clips ``[(start_s, end_s)]`` in video seconds."""
    if cfg.session_hours is not None:
        duration = cfg.session_hours * 3600.0
        starts = np.arange(0.0, duration - CLIP_S + 1e-9, CLIP_S)
        return duration, [(float(s), float(s) + CLIP_S) for s in starts]
    n = int(rng.choice([1, 2, 3], p=[0.72, 0.23, 0.05]))
    t = float(rng.uniform(0.0, 60.0))
    clips = []
    for _ in range(n):
        length = clip_length(rng)
        clips.append((t, t + length))
        t += length + float(rng.uniform(0.0, 120.0))
    return t + float(rng.uniform(0.0, 60.0)), clips


def _positions(rng: np.random.Generator, k: int, handled: bool) -> np.ndarray:
    """Image positions of ``k`` objects, kept apart; a handled object sits low (near hands)."""
    pos = np.empty((k, 2))
    for i in range(k):
        for _ in range(20):
            if i == 0 and handled:
                p = np.array([rng.uniform(0.25, 0.75), rng.uniform(0.5, 0.9)])
            else:
                p = rng.uniform(0.06, 0.94, size=2)
            if i == 0 or np.min(np.hypot(*(pos[:i] - p).T)) > 0.16:
                break
        pos[i] = p
    return pos


class _SceneLog:
    """Accumulates scenes (and their fixations) in time order."""

    def __init__(self, cfg: EgoSimConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.rows: list[tuple] = []
        self.fix_start: list[float] = []
        self.fix_xy: list[np.ndarray] = []
        self.fix_obj: list[int] = []

    def add(self, start: float, end: float, place: int, objects: list[int], handled: bool,
            verb: int = -1, person: int = -1) -> None:
        rng, diff = self.rng, self.cfg.difficulty
        objects = objects[:MAX_VISIBLE]
        pos = _positions(rng, len(objects), handled)
        self.rows.append((start, place, verb, person, objects, handled, pos))
        t = start
        while t < end:  # fixations: 0.15 s + exponential(0.45 s)
            if handled and rng.random() >= diff.gaze_off:
                target, obj = pos[0], objects[0]
            elif len(objects) > int(handled) and rng.random() < 0.85:
                i = rng.integers(int(handled), len(objects))
                target, obj = pos[i], objects[i]
            else:
                target, obj = rng.uniform(0.1, 0.9, size=2), -1
            self.fix_start.append(t)
            self.fix_obj.append(int(obj))
            self.fix_xy.append(target + rng.normal(0.0, 0.015, size=2))
            t += 0.15 + float(rng.exponential(0.45))


def build_timeline(cfg: EgoSimConfig, rng: np.random.Generator) -> Timeline:
    """Sample one session's story."""
    diff = cfg.difficulty
    duration, clips = layout_clips(cfg, rng)
    inventory = [rng.choice(len(OBJECTS), size=12, replace=False).tolist() for _ in PLACES]
    log = _SceneLog(cfg, rng)
    events: list[Event] = []
    container_ids = [OBJECT_INDEX[c] for c in CONTAINERS]
    t, place = 0.0, -1
    while t < duration:
        place = int(rng.choice([p for p in range(len(PLACES)) if p != place]))
        visit_end = min(duration, t + float(rng.uniform(40.0, 240.0)))
        inv = inventory[place]
        while t < visit_end:
            idle_end = min(visit_end, t + 1.0 + float(rng.exponential(6.0)))
            while t < idle_end:  # idle: look around the clutter
                s_end = min(idle_end, t + float(rng.uniform(2.0, 6.0)))
                k = 1 + rng.poisson(diff.clutter)
                log.add(t, s_end, place, rng.choice(inv, size=min(k, len(inv)),
                                                    replace=False).tolist(), handled=False)
                t = s_end
            if t >= visit_end:
                break
            end = min(visit_end, t + answer_duration(rng))
            person = -1
            r = rng.random()
            if r < 0.05:
                verb, obj, person = "talk", -1, int(rng.integers(len(PEOPLE)))
            else:
                obj = int(rng.choice(inv))
                verbs = verbs_for(OBJECTS[obj][0])
                w = np.array([VERB_WEIGHT.get(v, 1.0) for v in verbs])
                verb = str(rng.choice(verbs, p=w / w.sum()))
                if verb == "receive":
                    person = int(rng.integers(len(PEOPLE)))
            target = -1
            if verb == "put_in":
                target = int(rng.choice([c for c in container_ids if c != obj]))
            others = [o for o in inv if o not in (obj, target)]
            k = rng.poisson(diff.clutter)
            seen = rng.choice(others, size=min(k, len(others)), replace=False).tolist()
            objects = ([obj] if obj >= 0 else []) + ([target] if target >= 0 else []) + seen
            log.add(t, end, place, objects, handled=obj >= 0, verb=VERB_INDEX[verb],
                    person=person)
            events.append(Event(t, end, verb, obj, target, person, place))
            t = end
    rows = log.rows
    n = len(rows)
    objs = np.full((n, MAX_VISIBLE), -1, dtype=np.int32)
    pos = np.zeros((n, MAX_VISIBLE, 2), dtype=np.float32)
    for i, row in enumerate(rows):
        objs[i, : len(row[4])] = row[4]
        pos[i, : len(row[4])] = row[6]
    n_gaps = rng.poisson(duration / 120.0)
    gap_start = np.sort(rng.uniform(0.0, duration, size=n_gaps))
    untracked = np.stack([gap_start, gap_start + rng.uniform(0.3, 4.0, size=n_gaps)], axis=1)
    return Timeline(
        duration_s=duration,
        clips=clips,
        events=events,
        scene_start=np.array([r[0] for r in rows]),
        scene_place=np.array([r[1] for r in rows], dtype=np.int32),
        scene_verb=np.array([r[2] for r in rows], dtype=np.int32),
        scene_person=np.array([r[3] for r in rows], dtype=np.int32),
        scene_objects=objs,
        scene_handled=np.array([r[5] for r in rows], dtype=bool),
        scene_pos=pos,
        fix_start=np.array(log.fix_start),
        fix_xy=np.array(log.fix_xy).reshape(-1, 2),
        fix_obj=np.array(log.fix_obj, dtype=np.int32),
        untracked=untracked.reshape(-1, 2),
    )
