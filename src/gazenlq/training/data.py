"""Training data read from feature stores on demand (never whole datasets in memory).

Stage 2 is video-centric (SnAG): an item is one clip window with every query answered in
it, so one video forward pass serves several queries. Stage 1 items are windows of
eye-tracked stores. Items are deterministic in (seed, epoch, index), so a resumed run sees
exactly the data an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gazenlq.bundle.shapes import pad_to
from gazenlq.errors import GazeNLQError
from gazenlq.nlq.annotations import Query, QueryTable
from gazenlq.store import (
    GAZE_INPUT,
    GAZE_MAPS,
    GAZE_TYPE,
    VIDEO,
    FeatureStore,
    GazeType,
    store_path,
)
from gazenlq.timegrid import ClipSpan
from gazenlq.training.estimator import cell_shares


def store_for(stores: Path, video_uid: str) -> Path:
    """The store of ``video_uid`` under ``stores`` (``store_path``), which must exist."""
    path = store_path(stores, video_uid)
    if isinstance(path, Path) and not path.is_dir():  # a URL's absence: FeatureStore.open
        raise GazeNLQError(f"{path}: no feature store for video {video_uid}")
    return path


@dataclass(frozen=True)
class ClipItem:
    """One clip: where its features are, its steps in them (``span``) and its queries with
    answers in local steps."""

    store: Path
    clip_uid: str
    span: ClipSpan
    queries: tuple[Query, ...]
    answers: np.ndarray  # [Q, 2] local step coordinates (nan when unannotated)

    @property
    def length(self) -> int:
        return self.span.length


def clip_items(table: QueryTable, stores: Path) -> list[ClipItem]:
    """Group a query table by clip (queries without text are left out)."""
    by_clip: dict[str, list[Query]] = {}
    for q in table.with_text():
        by_clip.setdefault(q.clip_uid, []).append(q)
    items, opened = [], {}
    for clip_uid, queries in by_clip.items():
        q0 = queries[0]
        path = store_for(stores, q0.video_uid)
        if path not in opened:
            opened[path] = FeatureStore.open(path)
        store = opened[path]
        span = store.info.grid.clip(*q0.clip_window, store.num_steps)
        answers = np.array([span.to_steps(np.array(q.answer))
                            if q.answer is not None else (np.nan, np.nan) for q in queries],
                           dtype=np.float32).reshape(-1, 2)
        items.append(ClipItem(path, clip_uid, span, tuple(queries), answers))
    return items


class _Stores:
    """Per-process cache of opened stores (each DataLoader worker opens its own)."""

    def __init__(self) -> None:
        self._open: dict[Path, FeatureStore] = {}

    def __call__(self, path: Path) -> FeatureStore:
        if path not in self._open:
            self._open[path] = FeatureStore.open(path)
        return self._open[path]


class GroundingDataset(torch.utils.data.Dataset):
    """Video-centric stage-2 items: windows of at most ``max_len`` steps tiling each clip
    (shifted by a random offset every epoch), each with every query answered inside it.

    Every query is seen once or twice per epoch (the first and last windows are pulled
    inside the clip and overlap their neighbours: about 1.3 passes per query on EgoSim,
    an overlap that works as augmentation; docs/synthetic-data.md) and shares its
    window's video pass with the other queries of the window. Answers longer than
    ``max_len`` never fit a window and are left out of training (about 1 % of Ego4D
    answers at 256 steps). Windows without any answer carry no queries (the trainer skips
    batches without queries).

    ``with_gaze`` adds the gaze-estimator input features (``gaze``); ``gaze_tokens`` (a
    ``gaze_cache.GazeTokens``) adds the frozen estimator's tokens read from its cache
    (``gaze_tokens``) instead. ``gaze_grid`` adds the ground-truth gaze of every step for
    the attention regulariser (``gaze_pool``): its maps' mass in each cell of a
    ``gaze_grid`` x ``gaze_grid`` grid (``gaze_cells``) and whether the step has gaze
    (``has_gaze``: tracked, in a store with gaze maps). ``looked_at`` (store -> per-step
    object ids, ``gaze.looked_at.step_labels``) adds each step's looked-at object
    (``looked_at``, -1: none) for the semantic head.
    """

    def __init__(self, items: list[ClipItem], query_ids: dict[str, int], *,
                 max_len: int | None, with_gaze: bool, seed: int, gaze_tokens=None,
                 gaze_grid: int | None = None,
                 looked_at: dict[Path, np.ndarray] | None = None) -> None:
        self.clips, self.query_ids = items, query_ids
        self.max_len, self.with_gaze, self.seed = max_len, with_gaze, seed
        self.gaze_tokens, self.gaze_grid = gaze_tokens, gaze_grid
        self.looked_at = looked_at
        self.tiles = [(c, k) for c, item in enumerate(items)
                      for k in range(1 if max_len is None else -(-item.length // max_len) + 1)]
        self.epoch = 0
        self._stores = _Stores()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict:
        c, k = self.tiles[i]
        item = self.clips[c]
        n = item.length
        start, length = 0, n
        if self.max_len is not None and n > self.max_len:
            length = self.max_len
            offset = int(np.random.default_rng([self.seed, self.epoch, c]).integers(length))
            start = int(np.clip(k * length - offset, 0, n - length))
        ans = item.answers - start
        inside = (ans[:, 0] >= 0) & (ans[:, 1] <= length)
        store = self._stores(item.store)
        s0 = item.span.first + start
        s1 = s0 + length
        out = {"video": store.read(VIDEO, s0, s1).astype(np.float32),
               "queries": [self.query_ids[q.text] for q, k in zip(item.queries, inside) if k],
               "answers": ans[inside].reshape(-1, 2)}
        if self.with_gaze:
            out["gaze"] = store.read(GAZE_INPUT, s0, s1).astype(np.float32)
        if self.gaze_tokens is not None:
            out["gaze_tokens"] = self.gaze_tokens.read(item.clip_uid, start, start + length)
        if self.gaze_grid is not None:
            out.update(_gaze_cells(store, s0, s1, self.gaze_grid))
        if self.looked_at is not None:
            out["looked_at"] = self.looked_at[item.store][s0:s1]
        return out


def _gaze_cells(store: FeatureStore, s0: int, s1: int, grid: int) -> dict[str, np.ndarray]:
    """Steps ``s0:s1``'s gaze-map mass per cell ``[n, grid^2]`` and whether each has gaze."""
    if not store.has_gaze_maps:
        return {"gaze_cells": np.zeros((s1 - s0, grid * grid), np.float32),
                "has_gaze": np.zeros(s1 - s0, bool)}
    maps = torch.from_numpy(store.read(GAZE_MAPS, s0, s1).astype(np.float32))
    return {"gaze_cells": cell_shares(maps.flatten(1), grid).numpy(),
            "has_gaze": store.read(GAZE_TYPE, s0, s1) != GazeType.UNTRACKED}


class TextFeatures:
    """Frozen text-encoder token features of every query text, computed once."""

    def __init__(self, texts: list[str], encoder: torch.nn.Module, tokenizer,
                 batch_size: int = 64) -> None:
        self.index = {t: i for i, t in enumerate(dict.fromkeys(texts))}
        order = list(self.index)
        self.feats: list[torch.Tensor] = []
        with torch.no_grad():
            for b in range(0, len(order), batch_size):
                tok = tokenizer(order[b:b + batch_size])
                mask = torch.from_numpy(tok.attention_mask)
                f = encoder(torch.from_numpy(tok.input_ids), mask)
                self.feats += [x[: int(m.sum())].clone() for x, m in zip(f, mask)]
        self.dim = self.feats[0].shape[-1] if self.feats else 0

    def batch(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``[Q, L, D]`` float32 features and ``[Q, L]`` bool mask."""
        length = max(len(self.feats[i]) for i in ids)
        out = torch.zeros(len(ids), length, self.dim)
        mask = torch.zeros(len(ids), length, dtype=torch.bool)
        for row, i in enumerate(ids):
            f = self.feats[i]
            out[row, : len(f)] = f
            mask[row, : len(f)] = True
        return out, mask


class GroundingCollate:
    """Clips padded to a common length (a multiple of the coarsest stride) and the flat
    query batch with, per query, the index of its clip."""

    def __init__(self, text: TextFeatures, multiple: int) -> None:
        self.text, self.multiple = text, multiple

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        t = pad_to(max(len(it["video"]) for it in items), self.multiple)
        c = len(items)
        mask = torch.zeros(c, t, dtype=torch.bool)
        steps = {k: torch.zeros(c, t, items[0][k].shape[1])
                 for k in ("video", "gaze", "gaze_tokens", "gaze_cells") if k in items[0]}
        if "has_gaze" in items[0]:
            steps["has_gaze"] = torch.zeros(c, t, dtype=torch.bool)
        if "looked_at" in items[0]:  # padded steps are unlabelled
            steps["looked_at"] = torch.full((c, t), -1, dtype=torch.int64)
        clip_of, answers, qids = [], [], []
        for j, it in enumerate(items):
            n = len(it["video"])
            for k, padded in steps.items():
                padded[j, :n] = torch.from_numpy(it[k])
            mask[j, :n] = True
            clip_of += [j] * len(it["queries"])
            answers.append(it["answers"])
            qids += it["queries"]
        tokens, text_mask = self.text.batch(qids) if qids else (
            torch.zeros(0, 1, self.text.dim), torch.zeros(0, 1, dtype=torch.bool))
        return {**steps, "mask": mask, "clip_of": torch.tensor(clip_of),
                "answers": torch.from_numpy(np.concatenate(answers)).float(),
                "tokens": tokens, "text_mask": text_mask}


class GazeWindows(torch.utils.data.Dataset):
    """Stage-1 items: ``window``-step tiles of eye-tracked stores (features, maps, valid)."""

    def __init__(self, stores: list[Path], window: int) -> None:
        self.window = window
        self.tiles = []
        for path in stores:
            s = FeatureStore.open(path)
            if not s.has_gaze_maps:
                continue
            self.tiles += [(path, start) for start in range(0, s.num_steps - window + 1, window)]
        self._stores = _Stores()

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, s0 = self.tiles[i]
        store = self._stores(path)
        s1 = s0 + self.window
        types = store.read(GAZE_TYPE, s0, s1)
        return {"feats": torch.from_numpy(store.read(GAZE_INPUT, s0, s1).astype(np.float32)),
                "maps": torch.from_numpy(store.read(GAZE_MAPS, s0, s1).astype(np.float32)),
                "valid": torch.from_numpy(types != GazeType.UNTRACKED),
                "fixation": torch.from_numpy(types == GazeType.FIXATION)}
