"""EgoSim datasets: sessions -> feature stores + Ego4D NLQ JSON annotations per split."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazenlq.atomic import write_json_atomic
from gazenlq.errors import GazeNLQError, StoreError
from gazenlq.gaze.looked_at import FILE_NAME as LOOKED_AT
from gazenlq.gaze.looked_at import write_looked_at
from gazenlq.store import FeatureStore, StoreWriter
from gazenlq.store import store_path as _store_path
from gazenlq.synth.config import EgoSimConfig
from gazenlq.synth.queries import annotated, clip_queries
from gazenlq.synth.render import render
from gazenlq.synth.timeline import Timeline, build_timeline, looked_at_spans
from gazenlq.synth.world import OBJECTS, World
from gazenlq.workers import process_pool, stopped_on_error

SPLITS = ("train", "val", "test")
MANIFEST = "egosim.json"
ANNOTATION_VERSION = "2.0"


@dataclass(frozen=True)
class SessionPlan:
    """Identity of one session: its index, uid, split and whether it was eye-tracked."""

    index: int
    video_uid: str
    split: str
    has_gaze: bool


def _uid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def plan_sessions(cfg: EgoSimConfig) -> list[SessionPlan]:
    """Every session's identity, deterministic in ``cfg.seed``.

    Eye-tracked sessions are drawn per split (``round(gaze_fraction * n)`` of each), so
    every split of a dataset with gaze has some, as stage-1 training and validation need.
    """
    # session-scope datasets (long-video benchmarks, same world) get their own video uids
    scope = [] if cfg.query_scope == "clip" else [1]
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0x5E55, *scope]))
    order = rng.permutation(cfg.sessions)
    bounds = np.cumsum(np.array(cfg.split) / sum(cfg.split)) * cfg.sessions
    split_of = {int(s): SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
                for rank, s in enumerate(order)}
    uids = [_uid(rng) for _ in range(cfg.sessions)]
    tracked: set[int] = set()
    for split in SPLITS:
        members = sorted(i for i, sp in split_of.items() if sp == split)
        k = round(cfg.gaze_fraction * len(members))
        tracked.update(int(i) for i in rng.choice(members, size=k, replace=False))
    return [SessionPlan(i, uids[i], split_of[i], i in tracked) for i in range(cfg.sessions)]


def session_timeline(cfg: EgoSimConfig, plan: SessionPlan) -> Timeline:
    return build_timeline(cfg, np.random.default_rng(
        np.random.SeedSequence([cfg.seed, plan.index, 1])))


def _render_seed(cfg: EgoSimConfig, plan: SessionPlan) -> int:
    return int(np.random.SeedSequence([cfg.seed, plan.index, 3]).generate_state(1)[0])


def session_store(out: Path, plan: SessionPlan) -> Path:
    """The store of ``plan`` in the dataset ``out`` (under ``out/stores``)."""
    return _store_path(out / "stores", plan.video_uid)


def _store_is_current(path: Path, cfg: EgoSimConfig, plan: SessionPlan) -> bool:
    """A finished store of this very session and config (so a rerun can skip it)."""
    try:
        extra = FeatureStore.open(path).extra
    except StoreError:
        return False
    return extra.get("egosim_fingerprint") == cfg.fingerprint() and \
        extra.get("session_index") == plan.index


def write_session(cfg: EgoSimConfig, plan: SessionPlan, out: Path,
                  timeline: Timeline | None = None) -> Path:
    """Render one session into its store (skipped when an identical store exists)."""
    path = session_store(out, plan)
    if _store_is_current(path, cfg, plan):
        return path
    tl = timeline or session_timeline(cfg, plan)
    world = World.build(cfg.seed, cfg.video_dim, cfg.cell_dim, cfg.difficulty.text_align)
    num_steps = cfg.grid.num_steps(tl.duration_s)
    with StoreWriter(path, video_uid=plan.video_uid, video_dim=cfg.video_dim,
                     gaze_dim=cfg.gaze_dim, grid=cfg.grid, duration_s=tl.duration_s,
                     video_sources=("egosim-pooled",), gaze_sources=("egosim-spatial",),
                     with_gaze_maps=plan.has_gaze, overwrite=True,
                     extra_attrs={"egosim_fingerprint": cfg.fingerprint(),
                                  "session_index": plan.index, "split": plan.split}) as w:
        for block in render(tl, world, cfg, num_steps, _render_seed(cfg, plan), plan.has_gaze):
            w.append(block.video, block.gaze, block.gaze_maps, block.gaze_type)
    return path


def video_entry(cfg: EgoSimConfig, plan: SessionPlan, tl: Timeline) -> dict:
    """The session as one ``videos[]`` entry of the Ego4D NLQ JSON (v2 layout).

    Answer windows are the annotators' (``queries.annotated``), drawn from a generator of
    their own, so the knob moves the windows and nothing else."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, plan.index, 2]))
    annotator = np.random.default_rng(np.random.SeedSequence([cfg.seed, plan.index, 4]))
    fps = cfg.grid.fps
    clips = []
    session = cfg.query_scope == "session"
    for c0, c1 in [(0.0, tl.duration_s)] if session else tl.clips:
        inside = [e for e in tl.events if e.start_s >= c0 and e.end_s <= c1]
        queries = [annotated(q, (c0, c1), cfg.difficulty.boundary, annotator) for q in
                   clip_queries(inside, rng, cfg.session_queries if session else None)]
        groups = [queries[i:i + 7] for i in range(0, len(queries), 7)]
        annotations = [{
            "language_queries": [{
                "clip_start_sec": q.start_s - c0, "clip_end_sec": q.end_s - c0,
                "video_start_sec": q.start_s, "video_end_sec": q.end_s,
                "video_start_frame": int(q.start_s * fps), "video_end_frame": int(q.end_s * fps),
                "template": q.template, "query": q.text, "slot_x": q.slot, "verb_x": q.verb,
                "raw_tags": [q.template, q.text, q.slot, q.verb],
            } for q in group],
            "annotation_uid": _uid(rng),
        } for group in groups]
        clips.append({
            "clip_uid": _uid(rng), "video_start_sec": c0, "video_end_sec": c1,
            "video_start_frame": int(c0 * fps), "video_end_frame": int(c1 * fps),
            "clip_start_sec": 0, "clip_end_sec": c1 - c0, "clip_start_frame": 0,
            "clip_end_frame": int((c1 - c0) * fps), "source_clip_uid": _uid(rng),
            "annotations": annotations,
        })
    return {"video_uid": plan.video_uid, "split": plan.split, "clips": clips}


def _session_job(args: tuple[EgoSimConfig, SessionPlan, str]) -> tuple[dict, list]:
    cfg, plan, out = args
    tl = session_timeline(cfg, plan)
    write_session(cfg, plan, Path(out), tl)
    return video_entry(cfg, plan, tl), looked_at_spans(tl)


def generate(cfg: EgoSimConfig, out: str | os.PathLike, *, jobs: int = 1,
             on_session: Callable[[], None] | None = None) -> dict:
    """Write (or finish) an EgoSim dataset under ``out``; returns the manifest.

    Resumable: stores are published atomically and a rerun skips the finished ones; the
    annotation files and manifest are written (atomically) last.
    """
    out = Path(out)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("config") != json.loads(json.dumps(cfg.to_dict())):
            raise GazeNLQError(f"{out}: holds an EgoSim dataset of another config; "
                               "choose an empty directory")
    (out / "stores").mkdir(parents=True, exist_ok=True)
    plans = plan_sessions(cfg)
    work = [(cfg, p, str(out)) for p in plans]
    entries: list[dict] = []
    looked: dict[str, list] = {}

    def done(result: tuple[dict, list]) -> None:
        entries.append(result[0])
        looked[result[0]["video_uid"]] = result[1]
        if on_session:
            on_session()

    if jobs > 1 and len(work) > 1:
        with process_pool(jobs) as pool, stopped_on_error(pool):
            for result in pool.map(_session_job, work):
                done(result)
    else:
        for w in work:
            done(_session_job(w))
    (out / "annotations").mkdir(exist_ok=True)
    for split in SPLITS:
        write_json_atomic(out / "annotations" / f"nlq_{split}.json", {
            "version": ANNOTATION_VERSION, "date": "egosim",
            "description": f"EgoSim NLQ annotations ({split})",
            "videos": [e for e in entries if e["split"] == split]})
    write_looked_at(out / "annotations" / LOOKED_AT, [o[0] for o in OBJECTS], looked)
    manifest = {
        "generator": "gazenlq EgoSim", "config": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "sessions": [{"index": p.index, "video_uid": p.video_uid, "split": p.split,
                      "has_gaze": p.has_gaze,
                      "store": str(session_store(out, p).relative_to(out))} for p in plans],
    }
    write_json_atomic(manifest_path, manifest, indent=1)
    return manifest
