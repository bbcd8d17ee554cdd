"""The streaming search: stores are read window by window (prefetched), the per-video graph
runs once per window (or comes from the store's cache), the per-query graph runs on fused
batches of windows x queries, and candidates of all windows are merged by one Soft-NMS."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gazenlq.engine import cache as vcache
from gazenlq.engine.runtime import Runtime, RuntimeOptions
from gazenlq.errors import GazeNLQError
from gazenlq.store import GAZE_INPUT, VIDEO, FeatureStore, plan_windows


def _load_kernels() -> None:
    """Import the Numba kernels (Numba's start-up) and load every compiled kernel."""
    from gazenlq.kernels import warm_up

    warm_up()


@dataclass(frozen=True)
class SearchOptions:
    """How a search runs: window plan, batching, result count, caching."""

    top_k: int = 5
    window: int | None = None
    """Steps per model window (a multiple of the bundle's length multiple); default: the
    bundle's max length."""
    overlap: int = 256
    batch: int = 32
    """Rows (window x query pairs) per call of the per-query graph, at most."""
    fuse_steps: int = 8192
    """Rows x window steps per call of the per-query graph, at most: bounds memory whatever
    the video's length (3 full-length windows, or more shorter ones)."""
    use_cache: bool = True
    write_cache: bool = True
    prefetch: int = 2


@dataclass(frozen=True)
class Moment:
    """One answer: a window of a video in seconds (relative to ``origin_s``) with its score."""

    video: str
    start_s: float
    end_s: float
    score: float


@dataclass
class Timings:
    """Seconds spent per stage (``--explain``)."""

    text: float = 0.0
    io: float = 0.0
    video_model: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0
    ground_model: float = 0.0
    postprocess: float = 0.0
    windows: int = 0
    cached_windows: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class Scan:
    """What one store scan produced, per query: merged moments and the step-score timeline."""

    moments: list[list[Moment]]
    timeline: list[np.ndarray] = field(default_factory=list)


def _pad(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


class SearchEngine:
    """Loads a bundle once; answers queries over feature stores (no torch anywhere)."""

    def __init__(self, bundle: str | os.PathLike, runtime: RuntimeOptions = RuntimeOptions(),
                 options: SearchOptions = SearchOptions()) -> None:
        # Numba's start-up and kernel loading overlap with loading the ONNX graphs
        kernels = threading.Thread(target=_load_kernels, name="gazenlq-kernels", daemon=True)
        kernels.start()
        try:
            self.runtime = Runtime(bundle, runtime)
        finally:
            kernels.join()
        self.manifest = self.runtime.manifest
        self.options = options
        m = self.manifest
        window = options.window or m.max_len
        if window % m.length_multiple:
            raise GazeNLQError(f"--window {window}: must be a multiple of "
                               f"{m.length_multiple} (the bundle's coarsest stride)")
        if not 0 <= options.overlap < window:
            raise GazeNLQError(f"--overlap {options.overlap}: must be in [0, {window})")
        self.window = window
        self.strides = list(m.strides)
        post = m.postprocess
        self.post = post
        self.timings = Timings()

    def encode_queries(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        for q in queries:
            if not q.strip():
                raise GazeNLQError("empty query: give the question in words")
        t0 = time.perf_counter()
        out = self.runtime.text(list(queries))
        self.timings.text += time.perf_counter() - t0
        return out

    def _check_store(self, store: FeatureStore) -> None:
        dims = self.manifest.dims
        for array, key in ((VIDEO, "video_dim"), (GAZE_INPUT, "gaze_dim")):
            want = dims.get(key)
            if want and store.dim(array) != want:
                raise GazeNLQError(f"{store.path}: {array} has {store.dim(array)} features, "
                                   f"the bundle expects {want}")
        if store.info.grid != self.manifest.time_grid:
            raise GazeNLQError(f"{store.path}: time grid {store.info.grid} differs from the "
                               f"bundle's {self.manifest.time_grid}")

    def scan(self, store_path: Path, tokens: np.ndarray, text_mask: np.ndarray, *,
             start: int = 0, stop: int | None = None, timeline: bool = False) -> Scan:
        """Search steps ``[start, stop)`` of one store for every query; the moments are
        ``(segment, score)`` with the segment in steps relative to ``start``."""
        store_path = Path(store_path)
        store = FeatureStore.open(store_path)
        self._check_store(store)
        stop = store.num_steps if stop is None else stop
        n = stop - start
        length = min(self.window, _pad(n, self.manifest.length_multiple))
        plan = plan_windows(n, length, min(self.options.overlap, length - 1))
        t = self.timings
        q = len(tokens)
        cands: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        curve = [np.zeros(n, np.float32) for _ in range(q)] if timeline else []
        key = vcache.cache_key(self.manifest.files[self.manifest.graph(
            "video", self.runtime.precision).file].sha256, self.runtime.precision,
            length, self.options.overlap, start, stop)
        cached = vcache.load(store_path, key) if self.options.use_cache else None
        writer = None
        if cached is None and self.options.write_cache:
            writer = vcache.CacheWriter(
                store_path, key, len(plan), length, int(self.manifest.model["grounding"]
                                                         ["hidden"]),
                self.manifest.uses_gaze, {"length": length, "overlap": self.options.overlap,
                                          "start": start, "stop": stop,
                                          "bundle_video_sha256": key})
        arrays = (VIDEO, GAZE_INPUT) if self.manifest.uses_gaze else (VIDEO,)
        pending: list[tuple] = []  # windows waiting for one fused call of the ground graph
        per_call = max(1, self._rows(length) // max(q, 1))
        try:
            windows = self._windows(store, length, start, stop, arrays, cached is None)
            for i, (ws, we, data) in enumerate(windows):
                valid = we - ws
                t.windows += 1
                mask = np.zeros((1, length), bool)
                mask[0, :valid] = True
                if cached is not None:
                    t0 = time.perf_counter()
                    v_emb, g_emb = cached.window(i)
                    v_emb, g_emb = v_emb[None], None if g_emb is None else g_emb[None]
                    t.cache_read += time.perf_counter() - t0
                    t.cached_windows += 1
                else:
                    video = np.zeros((1, length, store.dim(VIDEO)), np.float32)
                    video[0, :valid] = data[VIDEO]
                    gaze = None
                    if self.manifest.uses_gaze:
                        gaze = np.zeros((1, length, store.dim(GAZE_INPUT)), np.float32)
                        gaze[0, :valid] = data[GAZE_INPUT]
                    t0 = time.perf_counter()
                    v_emb, g_emb = self.runtime.video(video, mask, gaze)
                    t.video_model += time.perf_counter() - t0
                    if writer is not None:
                        t0 = time.perf_counter()
                        writer.write(i, v_emb[0], None if g_emb is None else g_emb[0])
                        t.cache_write += time.perf_counter() - t0
                pending.append((ws, valid, v_emb[0], None if g_emb is None else g_emb[0],
                                mask[0]))
                if len(pending) >= per_call:
                    self._ground(pending, length, tokens, text_mask, cands, curve)
                    pending = []
            if pending:
                self._ground(pending, length, tokens, text_mask, cands, curve)
            if writer is not None:
                t0 = time.perf_counter()
                writer.publish()
                t.cache_write += time.perf_counter() - t0
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        from gazenlq.kernels import soft_nms

        t0 = time.perf_counter()
        moments = []
        for qi in range(q):
            parts = cands.get(qi, [])
            if not parts:
                moments.append([])
                continue
            segs = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
            kept = soft_nms(segs, scores, method=self.post.get("method", "gaussian"),
                            sigma=self.post.get("sigma", 0.75),
                            iou_threshold=self.post.get("iou_threshold", 0.1),
                            min_score=self.post.get("min_score", 0.001),
                            top_k=self.options.top_k)
            moments.append(list(zip(kept.segments.tolist(), kept.scores.tolist())))
        t.postprocess += time.perf_counter() - t0
        return Scan(moments, curve)

    def _windows(self, store: FeatureStore, length: int, start: int, stop: int, arrays,
                 need_data: bool):
        """Yield ``(start, stop, arrays)`` per window, relative to ``start``; features are
        read (prefetched) only when the cache cannot serve the window."""
        overlap = min(self.options.overlap, length - 1)
        if not need_data:
            for ws, we in plan_windows(stop - start, length, overlap):
                yield ws, we, {}
            return
        it = store.windows(length, overlap, arrays=arrays, prefetch=self.options.prefetch,
                           dtype=np.float32, start=start, stop=stop)
        while True:
            t0 = time.perf_counter()
            win = next(it, None)
            self.timings.io += time.perf_counter() - t0
            if win is None:
                return
            yield win.start - start, win.stop - start, win.arrays

    def _rows(self, length: int) -> int:
        """Rows per call of the per-query graph for windows of ``length`` steps."""
        return max(1, min(self.options.batch, self.options.fuse_steps // length))

    def _ground(self, windows: list[tuple], length: int, tokens: np.ndarray,
                text_mask: np.ndarray, cands, curve) -> None:
        """The ground graph on fused batches of (window, query) rows - many windows and many
        queries per call, at most ``options.batch`` rows - then decoding of every row."""
        from gazenlq.kernels import decode_segments

        t = self.timings
        q = len(tokens)
        sizes = [length // s for s in self.strides]
        post = self.post
        rows = [(w, qi) for w in range(len(windows)) for qi in range(q)]
        step = self._rows(length)
        for r0 in range(0, len(rows), step):
            chunk = rows[r0:r0 + step]
            wi = [w for w, _ in chunk]
            qi = [k for _, k in chunk]
            video_emb = np.stack([windows[w][2] for w in wi])
            gaze_emb = None if windows[0][3] is None else np.stack([windows[w][3] for w in wi])
            mask = np.stack([windows[w][4] for w in wi])
            t0 = time.perf_counter()
            logits, dists, pmask = self.runtime.ground(video_emb, gaze_emb, mask, tokens[qi],
                                                       text_mask[qi])
            t.ground_model += time.perf_counter() - t0
            t0 = time.perf_counter()
            logits = np.where(pmask, logits, -np.inf).astype(np.float32)
            for r, (w, k) in enumerate(chunk):
                ws, valid = windows[w][0], windows[w][1]
                cand = decode_segments(logits[r], dists[r], sizes, self.strides,
                                       score_threshold=post.get("score_threshold", 0.001),
                                       pre_nms_topk=post.get("pre_nms_topk", 2000),
                                       min_length=post.get("min_length", 0.001))
                cands[k].append((cand.segments + np.float32(ws), cand.scores))
                if curve:
                    prob = 1 / (1 + np.exp(-logits[r, :valid]))
                    seg = curve[k][ws:ws + valid]
                    np.maximum(seg, prob, out=seg)
            t.postprocess += time.perf_counter() - t0


@dataclass
class QueryResult:
    """The ranked moments of one query over every searched video."""

    query: str
    moments: list[Moment]
    timelines: dict[str, np.ndarray] = field(default_factory=dict)
    """Per video: the best per-step probability (plots), when asked for."""


def search(engine: SearchEngine, stores: Sequence[Path], queries: Sequence[str], *,
           timeline: bool = False, on_store=None) -> list[QueryResult]:
    """Every query over every store (whole videos); moments ranked across videos."""
    tokens, tmask = engine.encode_queries(queries)
    results = [QueryResult(q, []) for q in queries]
    for path in stores:
        store = FeatureStore.open(path)
        grid, info = store.info.grid, store.info
        scan = engine.scan(path, tokens, tmask, timeline=timeline)
        for qi, found in enumerate(scan.moments):
            for (s, e), score in found:
                a, b = grid.segments_to_seconds(np.array([s, e]), info.duration_s)
                results[qi].moments.append(Moment(info.video_uid, float(a), float(b),
                                                  float(score)))
            if timeline:
                results[qi].timelines[info.video_uid] = scan.timeline[qi]
        if on_store is not None:
            on_store()
    for r in results:
        r.moments.sort(key=lambda m: -m.score)
        del r.moments[engine.options.top_k:]
    return results


def answer_nlq(engine: SearchEngine, queries, stores_root: Path, on_clip=None) -> list:
    """Official submission entries for NLQ queries (``gazenlq.nlq.annotations.Query``):
    each clip's steps are searched for the clip's queries, windows in clip seconds."""
    from gazenlq.nlq.submission import Entry

    by_clip: dict[str, list] = defaultdict(list)
    for q in queries:
        by_clip[q.clip_uid].append(q)
    entries = []
    for clip_queries in by_clip.values():
        q0 = clip_queries[0]
        path = stores_root / f"{q0.video_uid}.zarr"
        store = FeatureStore.open(path)
        grid = store.info.grid
        c0, c1 = q0.clip_window
        first, stop = grid.clip_steps(c0, c1, store.num_steps)
        tokens, tmask = engine.encode_queries([q.text for q in clip_queries])
        scan = engine.scan(path, tokens, tmask, start=first, stop=stop)
        for q, found in zip(clip_queries, scan.moments):
            segs = np.array([s for s, _ in found], np.float64).reshape(-1, 2)
            secs = np.clip(grid.steps_to_clip(segs, c0, first), 0.0, c1 - c0)
            entries.append(Entry(q.clip_uid, q.annotation_uid, q.query_idx,
                                 tuple((float(a), float(b)) for a, b in secs)))
        if on_clip is not None:
            on_clip()
    return entries
