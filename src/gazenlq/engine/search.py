"""The streaming search: stores are read window by window (prefetched), the per-video graph
runs once per window (or comes from the store's cache), the per-query graph runs on fused
batches of windows x queries, and candidates of all windows are merged by one Soft-NMS.

:class:`SearchEngine` is the Python API (``SearchEngine.from_bundle(...)``, then
:meth:`~SearchEngine.search`, :meth:`~SearchEngine.answer_nlq`, :meth:`~SearchEngine.index`);
every call returns its own result object with its own :class:`Timings`."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from gazenlq.bundle import level_sizes, pad_to
from gazenlq.bundle.default import BundleChoice, resolve_bundle
from gazenlq.engine import cache as vcache
from gazenlq.engine.runtime import Runtime, RuntimeOptions
from gazenlq.errors import ParameterError, StoreError
from gazenlq.nlq.annotations import Query, QueryTable, load_queries
from gazenlq.nlq.submission import Entry, write_submission
from gazenlq.store import GAZE_INPUT, VIDEO, FeatureStore, find_stores, plan_windows, store_path
from gazenlq.timegrid import ClipSpan

Target = str | os.PathLike | Sequence[str | os.PathLike]
"""A store, a directory of stores (a library), or a list of stores."""


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
    """One answer: a window of a video (or of an NLQ clip) in seconds, with its score."""

    video: str
    start_s: float
    end_s: float
    score: float


@dataclass
class Timings:
    """Seconds spent per stage by one call (``--explain``); ``total`` is its wall time."""

    text: float = 0.0
    io: float = 0.0
    video_model: float = 0.0
    cache_read: float = 0.0
    cache_write: float = 0.0
    ground_model: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0
    windows: int = 0
    cached_windows: int = 0

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Timeline:
    """A query's best per-step probability over one video or clip, against seconds."""

    seconds: np.ndarray
    score: np.ndarray


@dataclass
class QueryResult:
    """The ranked moments of one query over every searched video."""

    query: str
    moments: list[Moment]
    timelines: dict[str, Timeline] = field(default_factory=dict)
    """Per video (or clip): the score timeline, when asked for (plots)."""


@dataclass
class SearchResult:
    """What :meth:`SearchEngine.search` found: one :class:`QueryResult` per query, in order
    (iterable, indexable), and the call's timings."""

    results: list[QueryResult]
    timings: Timings
    stores: list[Path]

    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> QueryResult:
        return self.results[i]


@dataclass
class NLQResult:
    """Answers to an Ego4D NLQ annotation file: submission entries (clip seconds), the same
    answers as :class:`QueryResult` (``video`` is the clip), and the call's timings."""

    entries: list[Entry]
    results: list[QueryResult]
    queries: list[Query]
    timings: Timings

    @property
    def clips(self) -> int:
        return len({q.clip_uid for q in self.queries})

    def write_submission(self, path: str | os.PathLike) -> None:
        """Write the official Ego4D NLQ submission file (atomically)."""
        write_submission(path, self.entries)


@dataclass
class _Scan:
    """What one store scan produced, per query: moments in steps relative to the scanned
    range, and the step-score curves."""

    moments: list[list[tuple[list[float], float]]]
    curves: list[np.ndarray] = field(default_factory=list)


def stores_of(target: Target) -> list[Path]:
    """The stores a target names: a store, the stores of a directory, or a list of stores."""
    if isinstance(target, (str, os.PathLike)):
        return find_stores(target)
    stores = [Path(t) for t in target]
    if not stores:
        raise ParameterError("target", [], "give at least one store")
    return stores


class SearchEngine:
    """Loads a bundle once; answers queries over feature stores (no torch anywhere)."""

    def __init__(self, bundle: str | os.PathLike | BundleChoice,
                 runtime: RuntimeOptions = RuntimeOptions(),
                 options: SearchOptions = SearchOptions()) -> None:
        self.bundle = bundle if isinstance(bundle, BundleChoice) else resolve_bundle(bundle)
        # Numba's start-up and kernel loading overlap with loading the ONNX graphs
        kernels = threading.Thread(target=_load_kernels, name="gazenlq-kernels", daemon=True)
        kernels.start()
        try:
            self.runtime = Runtime(self.bundle.path, runtime)
        finally:
            kernels.join()
        self.manifest = m = self.runtime.manifest
        self.options = options
        window = options.window or m.max_len
        if window % m.length_multiple:
            raise ParameterError("window", window, f"must be a multiple of {m.length_multiple} "
                                 "(the bundle's coarsest stride)")
        if not 0 <= options.overlap < window:
            raise ParameterError("overlap", options.overlap, f"must be in [0, {window})")
        if options.top_k < 1:
            raise ParameterError("top_k", options.top_k, "must be at least 1")
        self.window = window
        self.strides = list(m.strides)
        self.post = m.postprocess

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike | None = None, *, device: str = "cpu",
                    precision: str = "fp32", threads: int | None = None,
                    **options) -> SearchEngine:
        """Load ``bundle`` (default: ``$GAZENLQ_BUNDLE``, else the user's default bundle) on
        ``device`` (cpu, cuda, tensorrt, trt-native) at ``precision`` (fp32, fp16);
        ``options`` are :class:`SearchOptions` fields (top_k, window, overlap, batch, ...)."""
        return cls(resolve_bundle(bundle), RuntimeOptions(device, precision, threads),
                   SearchOptions(**options))

    # -- the API --------------------------------------------------------------------------

    def search(self, target: Target, queries: str | Sequence[str], *, top_k: int | None = None,
               timeline: bool = False, on_store: Callable[[], object] | None = None
               ) -> SearchResult:
        """Every query over every store of ``target`` (whole videos); each query's moments
        ranked across videos, ``top_k`` of them (default: the options' ``top_k``)."""
        t_start = time.perf_counter()
        queries = [queries] if isinstance(queries, str) else list(queries)
        top_k = self._top_k(top_k)
        stores = stores_of(target)
        timings = Timings()
        tokens, tmask = self._encode(queries, timings)
        results = [QueryResult(q, []) for q in queries]
        for path in stores:
            store = FeatureStore.open(path)
            info = store.info
            scan = self._scan(path, tokens, tmask, timings, top_k=top_k, timeline=timeline)
            for qi, found in enumerate(scan.moments):
                for (s, e), score in found:
                    a, b = info.grid.segments_to_seconds(np.array([s, e]), info.duration_s)
                    results[qi].moments.append(Moment(info.video_uid, float(a), float(b),
                                                      float(score)))
                if timeline:
                    curve = scan.curves[qi]
                    results[qi].timelines[info.video_uid] = Timeline(
                        info.grid.to_seconds(np.arange(len(curve))), curve)
            if on_store is not None:
                on_store()
        for r in results:
            r.moments.sort(key=lambda m: -m.score)
            del r.moments[top_k:]
        timings.total = time.perf_counter() - t_start
        return SearchResult(results, timings, stores)

    def answer_nlq(self, annotations: str | os.PathLike | QueryTable | Sequence[Query],
                   stores: str | os.PathLike, *, top_k: int | None = None,
                   timeline: bool = False, on_clip: Callable[[], object] | None = None
                   ) -> NLQResult:
        """Answer an Ego4D NLQ annotation file (or its parsed queries): each clip's steps of
        its video's store (``stores/<video_uid>.zarr``) are searched for the clip's queries;
        windows in clip seconds, ready for :meth:`NLQResult.write_submission`."""
        t_start = time.perf_counter()
        top_k = self._top_k(top_k)
        if isinstance(annotations, (str, os.PathLike)):
            annotations = load_queries(annotations)
        queries = list(annotations.with_text() if isinstance(annotations, QueryTable)
                       else annotations)
        timings = Timings()
        by_clip: dict[str, list[Query]] = defaultdict(list)
        for q in queries:
            by_clip[q.clip_uid].append(q)
        entries, results = [], []
        for clip_queries in by_clip.values():
            q0 = clip_queries[0]
            path = store_path(stores, q0.video_uid)
            span = self._clip(path, q0)
            tokens, tmask = self._encode([q.text for q in clip_queries], timings)
            scan = self._scan(path, tokens, tmask, timings, top_k=top_k, start=span.first,
                              stop=span.stop, timeline=timeline)
            for qi, (q, found) in enumerate(zip(clip_queries, scan.moments)):
                segs = np.array([s for s, _ in found], np.float64).reshape(-1, 2)
                secs = span.to_seconds(segs)
                entries.append(Entry(q.clip_uid, q.annotation_uid, q.query_idx,
                                     tuple((float(a), float(b)) for a, b in secs)))
                result = QueryResult(q.text, [Moment(q.clip_uid, float(a), float(b), float(sc))
                                              for (a, b), (_, sc) in zip(secs, found)])
                if timeline:
                    curve = scan.curves[qi]
                    result.timelines[q.clip_uid] = Timeline(
                        span.to_seconds(np.arange(len(curve)), clamp=False), curve)
                results.append(result)
            if on_clip is not None:
                on_clip()
        timings.total = time.perf_counter() - t_start
        order = [q for qs in by_clip.values() for q in qs]
        return NLQResult(entries, results, order, timings)

    def index(self, target: Target, *, on_store: Callable[[], object] | None = None
              ) -> Timings:
        """Build the per-video caches of every store of ``target`` ahead of searches."""
        t_start = time.perf_counter()
        timings = Timings()
        tokens, tmask = self._encode(["index"], timings)
        for path in stores_of(target):
            self._scan(path, tokens, tmask, timings, top_k=1)
            if on_store is not None:
                on_store()
        timings.total = time.perf_counter() - t_start
        return timings

    # -- internals ------------------------------------------------------------------------

    def _top_k(self, top_k: int | None) -> int:
        top_k = self.options.top_k if top_k is None else top_k
        if top_k < 1:
            raise ParameterError("top_k", top_k, "must be at least 1")
        return top_k

    def _encode(self, queries: Sequence[str], timings: Timings
                ) -> tuple[np.ndarray, np.ndarray]:
        if not queries:
            raise ParameterError("queries", [], "give at least one question")
        for q in queries:
            if not q.strip():
                raise ParameterError("queries", q, "empty query: give the question in words")
        t0 = time.perf_counter()
        out = self.runtime.text(list(queries))
        timings.text += time.perf_counter() - t0
        return out

    @staticmethod
    def _clip(path: Path, query: Query) -> ClipSpan:
        """The steps of ``query``'s clip in its store."""
        store = FeatureStore.open(path)
        return store.info.grid.clip(*query.clip_window, store.num_steps)

    def _check_store(self, store: FeatureStore) -> None:
        dims = self.manifest.dims
        for array, key in ((VIDEO, "video_dim"), (GAZE_INPUT, "gaze_dim")):
            want = dims.get(key)
            if want and store.dim(array) != want:
                raise StoreError(f"{store.path}: {array} has {store.dim(array)} features, "
                                 f"the bundle expects {want}")
        if store.info.grid != self.manifest.time_grid:
            raise StoreError(f"{store.path}: time grid {store.info.grid} differs from the "
                             f"bundle's {self.manifest.time_grid}")

    def _scan(self, store_path: Path, tokens: np.ndarray, text_mask: np.ndarray,
              timings: Timings, *, top_k: int, start: int = 0, stop: int | None = None,
              timeline: bool = False) -> _Scan:
        """Search steps ``[start, stop)`` of one store for every query; the moments are
        ``(segment, score)`` with the segment in steps relative to ``start``."""
        store_path = Path(store_path)
        store = FeatureStore.open(store_path)
        self._check_store(store)
        stop = store.num_steps if stop is None else stop
        n = stop - start
        length = min(self.window, pad_to(n, self.manifest.length_multiple))
        plan = plan_windows(n, length, min(self.options.overlap, length - 1))
        t = timings
        q = len(tokens)
        cands: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        curves = [np.zeros(n, np.float32) for _ in range(q)] if timeline else []
        key = vcache.cache_key(self.manifest.files[self.manifest.graph(
            "video", self.runtime.precision).file].sha256, self.runtime.precision,
            length, self.options.overlap, start, stop)
        cached = vcache.load(store_path, key) if self.options.use_cache else None
        writer = None
        if cached is None and self.options.write_cache:
            writer = vcache.CacheWriter(
                store_path, key, len(plan), length, int(self.manifest.dims["hidden"]),
                self.manifest.uses_gaze, {"length": length, "overlap": self.options.overlap,
                                          "start": start, "stop": stop,
                                          "bundle_video_sha256": key})
        arrays = (VIDEO, GAZE_INPUT) if self.manifest.uses_gaze else (VIDEO,)
        pending: list[tuple] = []  # windows waiting for one fused call of the ground graph
        per_call = max(1, self._rows(length) // max(q, 1))
        try:
            windows = self._windows(store, length, start, stop, arrays, cached is None, t)
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
                    self._ground(pending, length, tokens, text_mask, cands, curves, t)
                    pending = []
            if pending:
                self._ground(pending, length, tokens, text_mask, cands, curves, t)
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
        post = self.post
        moments = []
        for qi in range(q):
            parts = cands.get(qi, [])
            if not parts:
                moments.append([])
                continue
            segs = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
            kept = soft_nms(segs, scores, method=post.method, sigma=post.sigma,
                            iou_threshold=post.iou_threshold, min_score=post.min_score,
                            top_k=top_k, voting_thresh=post.voting_thresh)
            moments.append(list(zip(kept.segments.tolist(), kept.scores.tolist())))
        t.postprocess += time.perf_counter() - t0
        return _Scan(moments, curves)

    def _windows(self, store: FeatureStore, length: int, start: int, stop: int, arrays,
                 need_data: bool, timings: Timings):
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
            timings.io += time.perf_counter() - t0
            if win is None:
                return
            yield win.start - start, win.stop - start, win.arrays

    def _rows(self, length: int) -> int:
        """Rows per call of the per-query graph for windows of ``length`` steps."""
        return max(1, min(self.options.batch, self.options.fuse_steps // length))

    def _ground(self, windows: list[tuple], length: int, tokens: np.ndarray,
                text_mask: np.ndarray, cands, curves, timings: Timings) -> None:
        """The ground graph on fused batches of (window, query) rows - many windows and many
        queries per call, at most ``options.batch`` rows - then decoding of every row."""
        from gazenlq.kernels import decode_segments

        t = timings
        q = len(tokens)
        sizes = level_sizes(length, len(self.strides))
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
                                       score_threshold=post.score_threshold,
                                       pre_nms_topk=post.pre_nms_topk,
                                       min_length=post.min_length)
                cands[k].append((cand.segments + np.float32(ws), cand.scores))
                if curves:
                    prob = 1 / (1 + np.exp(-logits[r, :valid]))
                    seg = curves[k][ws:ws + valid]
                    np.maximum(seg, prob, out=seg)
            t.postprocess += time.perf_counter() - t0
