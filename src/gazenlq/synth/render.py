"""Render a session's timeline into per-step features and gaze maps, chunk by chunk.

Memory is bounded by the chunk, not the session, so 10-hour sessions stream straight into a
store. Chunks are a fixed number of steps, each with its own seeded generator, so the output
does not depend on anything but the config and the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gazenlq.gaze.heatmap import step_maps_and_types
from gazenlq.synth.config import GRID_SIDE, EgoSimConfig
from gazenlq.synth.timeline import Timeline
from gazenlq.synth.world import World

RENDER_CHUNK = 1024
SAMPLES_PER_STEP = 8
DRIFT_TAU_S = 60.0
_JITTER = np.random.default_rng(7).normal(0.0, 0.004, size=(4096, 2))


@dataclass
class Block:
    """Features of steps ``[start, start + len)``; gaze maps only for eye-tracked sessions."""

    start: int
    video: np.ndarray
    gaze: np.ndarray
    gaze_maps: np.ndarray | None
    gaze_type: np.ndarray | None


def _scene_vectors(tl: Timeline, world: World, lo: int, hi: int,
                   hand_cue: float) -> tuple[np.ndarray, np.ndarray]:
    """Pooled video vectors ``[n, Dv]`` and spatial cell grids ``[n, 16 * d_cell]`` of scenes
    ``lo..hi-1``, in units where each concept has per-dimension std 1."""
    objs = tl.scene_objects[lo:hi]
    valid = objs >= 0
    safe = np.where(valid, objs, 0)
    video = world.video_place[tl.scene_place[lo:hi]].copy()
    video += (world.video_object[safe] * valid[..., None]).sum(axis=1)
    verb = tl.scene_verb[lo:hi]
    video += np.where((verb >= 0)[:, None], world.video_verb[np.maximum(verb, 0)], 0.0)
    person = tl.scene_person[lo:hi]
    video += np.where((person >= 0)[:, None], world.video_person[np.maximum(person, 0)], 0.0)

    n, k = objs.shape
    d = world.cell_object.shape[1]
    pos = tl.scene_pos[lo:hi] * GRID_SIDE
    cell_xy = np.clip(np.floor(pos), 0, GRID_SIDE - 1)
    frac = pos - cell_xy
    cell = (cell_xy[..., 1] * GRID_SIDE + cell_xy[..., 0]).astype(np.int64)
    content = world.cell_object[safe]
    content += (2 * frac[..., :1] - 1) * 0.5 * world.cell_position[0]
    content += (2 * frac[..., 1:] - 1) * 0.5 * world.cell_position[1]
    handled = np.zeros((n, k), dtype=bool)
    handled[:, 0] = tl.scene_handled[lo:hi]
    content += hand_cue * handled[..., None] * world.cell_hand
    content *= valid[..., None]
    grids = np.zeros((n, GRID_SIDE * GRID_SIDE, d), dtype=np.float32)
    np.add.at(grids, (np.repeat(np.arange(n), k), cell.ravel()), content.reshape(n * k, d))
    return (video * np.sqrt(video.shape[1])).astype(np.float32), \
        (grids.reshape(n, -1) * np.sqrt(d)).astype(np.float32)


def _frame_gaze(tl: Timeline, frames: np.ndarray, fps: float) -> tuple[np.ndarray, ...]:
    """Image-space gaze (x, y) and tracking flag of each frame: the current fixation with
    fixational jitter, a two-frame saccade into each new fixation, tracking gaps."""
    t = frames / fps
    idx = np.searchsorted(tl.fix_start, t, side="right") - 1
    idx = np.clip(idx, 0, len(tl.fix_start) - 1)
    xy = tl.fix_xy[idx].copy()
    since = np.floor((t - tl.fix_start[idx]) * fps)
    prev = tl.fix_xy[np.maximum(idx - 1, 0)]
    for lag, w in ((0, 1 / 3), (1, 2 / 3)):
        sel = since == lag
        xy[sel] = prev[sel] + w * (xy[sel] - prev[sel])
    xy += _JITTER[(frames * 2654435761) % len(_JITTER)]
    gaps = np.vstack([[-1.0, -1.0], tl.untracked])  # sentinel: never inside
    gap = np.searchsorted(gaps[:, 0], t, side="right") - 1
    in_gap = t < gaps[gap, 1]
    return xy[:, 0], xy[:, 1], ~in_gap & (t < tl.duration_s)


def render(tl: Timeline, world: World, cfg: EgoSimConfig, num_steps: int, session_seed: int,
           with_gaze: bool) -> Iterator[Block]:
    """Yield the session's steps in blocks of :data:`RENDER_CHUNK`."""
    grid, diff = cfg.grid, cfg.difficulty
    rho = float(np.exp(-grid.seconds_per_step / DRIFT_TAU_S))
    drift_v = drift_g = None
    for c, start in enumerate(range(0, num_steps, RENDER_CHUNK)):
        n = min(RENDER_CHUNK, num_steps - start)
        rng = np.random.default_rng(np.random.SeedSequence([session_seed, c]))
        steps = np.arange(start, start + n)
        frames = steps[:, None] * grid.stride + (np.arange(SAMPLES_PER_STEP) + 0.5) * (
            grid.window / SAMPLES_PER_STEP)
        scene = tl.scene_at(frames / grid.fps)
        lo, hi = int(scene.min()), int(scene.max()) + 1
        sv, sg = _scene_vectors(tl, world, lo, hi, diff.hand_cue)
        video = sv[scene - lo].mean(axis=1)
        gaze = sg[scene - lo].mean(axis=1)
        if drift_v is None:
            drift_v = rng.standard_normal(video.shape[1]).astype(np.float32) * diff.drift
            drift_g = rng.standard_normal(gaze.shape[1]).astype(np.float32) * diff.drift
        innov = np.sqrt(1 - rho**2) * diff.drift
        dv = np.empty_like(video)
        dg = np.empty_like(gaze)
        ev = rng.standard_normal(video.shape).astype(np.float32) * innov
        eg = rng.standard_normal(gaze.shape).astype(np.float32) * innov
        for i in range(n):  # AR(1) drift, carried across chunks
            drift_v = rho * drift_v + ev[i]
            drift_g = rho * drift_g + eg[i]
            dv[i], dg[i] = drift_v, drift_g
        video += dv + rng.standard_normal(video.shape).astype(np.float32) * diff.noise
        gaze += dg + rng.standard_normal(gaze.shape).astype(np.float32) * diff.noise
        maps = types = None
        if with_gaze:
            first = start * grid.stride
            f = np.arange(first, (start + n - 1) * grid.stride + grid.window)
            x, y, tracked = _frame_gaze(tl, f, grid.fps)
            maps, types = step_maps_and_types(x, y, tracked, grid, 0, n)  # frames from `first`
            maps = maps.astype(np.float32)
        yield Block(start, video, gaze, maps, types)
