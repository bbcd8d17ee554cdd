"""The search: stores are cut into windows; the per-video graph runs once per window and its
outputs are kept as the store's index (``cache``). Exhaustive search runs the per-query
graph on fused batches of every window x query; coarse to fine scores the library's coarse
spans first (``coarse``) and runs it only on each query's best spans' regions. Either way
each query's candidates of a store are merged by one Soft-NMS.

:class:`SearchEngine` is the Python API (``SearchEngine.from_bundle(...)``, then
:meth:`~SearchEngine.search`, :meth:`~SearchEngine.answer_nlq`, :meth:`~SearchEngine.index`);
every call returns its own result object with its own :class:`Timings`."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gazenlq.bundle import level_sizes, pad_to
from gazenlq.bundle.default import BundleChoice, resolve_bundle
from gazenlq.bundle.manifest import BundleError
from gazenlq.engine import cache as vcache
from gazenlq.engine.options import MODES, SearchOptions
from gazenlq.engine.results import (
    Moment,
    NLQResult,
    QueryResult,
    SearchResult,
    Timeline,
    Timings,
)
from gazenlq.engine.runtime import Runtime, RuntimeOptions
from gazenlq.errors import ParameterError, StoreError, warn
from gazenlq.gaze.looked_at import THRESHOLD as LOOKED_AT_THRESHOLD
from gazenlq.gaze.looked_at import ranked_spans, span_segments
from gazenlq.nlq.annotations import Query, QueryTable, load_queries
from gazenlq.nlq.submission import Entry
from gazenlq.store import GAZE_INPUT, VIDEO, FeatureStore, find_stores, plan_windows, store_path
from gazenlq.store.remote import Location, location
from gazenlq.timegrid import ClipSpan

Target = str | os.PathLike | Sequence[str | os.PathLike]
"""A store, a directory of stores (a library), or a list of stores."""


def _texts(texts: Sequence[str], parameter: str, none: str, blank: str) -> list[str]:
    """``texts`` as a list for a text graph; none at all, or a blank one, is a
    ``ParameterError`` naming ``parameter`` (``none`` / ``blank`` say what was expected)."""
    texts = list(texts)
    if not texts:
        raise ParameterError(parameter, [], none)
    for text in texts:
        if not text.strip():
            raise ParameterError(parameter, text, blank)
    return texts


def _load_kernels() -> None:
    """Import the Numba kernels (Numba's start-up) and load the two a search calls
    (decoding and Soft-NMS); the others would only lengthen a new process's first answer."""
    from gazenlq.kernels import warm_up

    warm_up(search_only=True)


@dataclass(frozen=True)
class _Plan:
    """Steps ``[start, stop)`` of one store cut into windows of ``length`` steps, and the
    key of their cache (index)."""

    path: Location
    store: FeatureStore
    start: int
    stop: int
    length: int
    overlap: int
    windows: list[tuple[int, int]]
    key: str
    cache: Path
    """Where the store's caches live (``cache.cache_root``)."""

    def __str__(self) -> str:
        return f"{self.path}[{self.start}:{self.stop}]"


class _Text(NamedTuple):
    """Encoded queries: token features, their mask and (coarse stage) query embeddings."""

    tokens: np.ndarray
    mask: np.ndarray
    query_emb: np.ndarray | None


@dataclass(frozen=True)
class _Row:
    """One row of the ground graph: a query against a window (or a region of one) starting
    at ``start`` (steps of the plan) with ``valid`` valid steps of embeddings."""

    query: int
    start: int
    valid: int
    video: np.ndarray
    gaze: np.ndarray | None


@dataclass
class _Scan:
    """What one store scan produced, per query: moments in steps relative to the scanned
    range, and the step-score curves."""

    moments: list[list[tuple[list[float], float]]]
    curves: list[np.ndarray] = field(default_factory=list)


def stores_of(target: Target) -> list[Location]:
    """The stores a target names: a store, the stores of a directory (or URL prefix), or a
    list of stores."""
    if isinstance(target, (str, os.PathLike)):
        return find_stores(target)
    stores = [location(t) for t in target]
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
            self.runtime = Runtime(self.bundle.path, runtime, max_length=options.window,
                                   max_batch=options.batch)
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
        if options.mode not in MODES:
            raise ParameterError("mode", options.mode, f"expected {', '.join(MODES)}")
        if options.mode == "coarse" and m.coarse is None:
            raise ParameterError("mode", "coarse", "this bundle has no coarse stage (export "
                                 "a model trained with one, or search exhaustively)")
        if options.mode == "coarse" and not options.use_cache:
            raise ParameterError("mode", "coarse", "coarse to fine reads the index: keep "
                                 "use_cache on")
        if options.candidates < 1:
            raise ParameterError("candidates", options.candidates, "must be at least 1")
        if options.context < 0:
            raise ParameterError("context", options.context, "must be >= 0")
        self.window = window
        self.strides = list(m.strides)
        self.post = m.postprocess
        self.coarse = m.coarse
        self._library: tuple[tuple, object] | None = None  # the last library's span index
        self._plans: dict[tuple, tuple] = {}
        self._caches: dict[tuple, vcache.CachedEmbeddings] = {}
        self._vocab_emb: np.ndarray | None = None

    @classmethod
    def from_bundle(cls, bundle: str | os.PathLike | None = None, *, device: str = "cpu",
                    precision: str = "fp32", threads: int | None = None,
                    **options) -> SearchEngine:
        """Load ``bundle`` (default: ``$GAZENLQ_BUNDLE``, else the user's default bundle) on
        ``device`` (cpu, cuda, tensorrt, trt-native) at ``precision`` (fp32, fp16);
        ``options`` are :class:`SearchOptions` fields (top_k, window, overlap, batch, ...)."""
        return cls(resolve_bundle(bundle), RuntimeOptions(device, precision, threads),
                   SearchOptions(**options))

    def close(self) -> None:
        """Release the runtime now (the native TensorRT engines' GPU buffers and streams;
        ONNX Runtime sessions are dropped); any later call is a one-line error."""
        self.runtime.close()

    def __enter__(self) -> SearchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        text = self._encode(queries, timings)
        plans = [self._plan(path) for path in stores]
        results = [QueryResult(q, []) for q in queries]
        for plan, scan in zip(plans, self._search(plans, text, timings, top_k=top_k,
                                                  timeline=timeline, on_plan=on_store)):
            info = plan.store.info
            for qi, found in enumerate(scan.moments):
                for (s, e), score in found:
                    a, b = info.grid.segments_to_seconds(np.array([s, e]), info.duration_s)
                    results[qi].moments.append(Moment(info.video_uid, float(a), float(b),
                                                      float(score)))
                if timeline:
                    curve = scan.curves[qi]
                    results[qi].timelines[info.video_uid] = Timeline(
                        info.grid.to_seconds(np.arange(len(curve))), curve)
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
            text = self._encode([q.text for q in clip_queries], timings)
            [scan] = self._search([self._plan(path, span.first, span.stop)], text, timings,
                                  top_k=top_k, timeline=timeline)
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
        """Build the per-video caches (the index: embeddings and coarse spans) of every
        store of ``target`` that lacks one for this bundle; the others are left as they
        are, so adding a store to a library indexes only that store."""
        t_start = time.perf_counter()
        timings = Timings()
        for path in stores_of(target):
            self._index(self._plan(path), timings)
            if on_store is not None:
                on_store()
        timings.total = time.perf_counter() - t_start
        return timings

    # -- what the wearer looked at ----------------------------------------------------------

    def looked_at(self, target: Target, nouns: str | Sequence[str], *,
                  top_k: int | None = None, timeline: bool = False,
                  threshold: float = LOOKED_AT_THRESHOLD,
                  on_store: Callable[[], object] | None = None) -> SearchResult:
        """When the wearer looked at each noun, over every store of ``target``: the runs of
        steps whose looked-at probability reaches ``threshold`` (``engine.looked_at``),
        ranked across videos by their mean probability, ``top_k`` of them; with
        ``timeline``, each video's probability track. Needs a bundle with a looked-at
        head."""
        from gazenlq.engine.looked_at import track

        t_start = time.perf_counter()
        nouns = [nouns] if isinstance(nouns, str) else list(nouns)
        if not 0 < threshold <= 1:
            raise ParameterError("threshold", threshold, "must be in (0, 1]")
        top_k = self._top_k(top_k)
        timings = Timings()
        emb = self.noun_embeddings(nouns, timings)
        vocabulary, scale = self._vocabulary(timings), float(self.manifest.looked_at["scale"])
        stores = stores_of(target)
        results = [QueryResult(n, []) for n in nouns]
        for path in stores:
            plan = self._plan(path)
            steps = self._label_embeddings(plan, timings)
            info = plan.store.info
            t0 = time.perf_counter()
            for qi, noun in enumerate(emb):
                prob = track(steps, noun, vocabulary, scale)
                for (s, e), score in ranked_spans(prob, threshold)[:top_k]:
                    a, b = info.grid.segments_to_seconds(span_segments([(s, e)])[0],
                                                         info.duration_s)
                    results[qi].moments.append(Moment(info.video_uid, float(a), float(b),
                                                      score))
                if timeline:
                    results[qi].timelines[info.video_uid] = Timeline(
                        info.grid.to_seconds(np.arange(len(prob))), prob)
            timings.postprocess += time.perf_counter() - t0
            if on_store is not None:
                on_store()
        for r in results:
            r.moments.sort(key=lambda m: -m.score)
            del r.moments[top_k:]
        timings.total = time.perf_counter() - t_start
        return SearchResult(results, timings, stores)

    def label_embeddings(self, store: str | os.PathLike) -> np.ndarray:
        """``[T, D]``: every step's looked-at label embedding of ``store`` (unit vectors, in
        the text graph's noun space; from the index when there is one)."""
        return self._label_embeddings(self._plan(store), Timings())

    def noun_embeddings(self, nouns: Sequence[str], timings: Timings | None = None
                        ) -> np.ndarray:
        """``[Q, D]``: the noun embeddings of ``nouns`` by the bundle's text graph."""
        self._require_looked_at()
        nouns = _texts(nouns, "looked_at", "give at least one noun",
                       "empty: name what was looked at")
        t0 = time.perf_counter()
        out = self.runtime.nouns(nouns)
        if timings is not None:
            timings.text += time.perf_counter() - t0
        return out

    @property
    def looked_at_vocabulary(self) -> tuple[str, ...]:
        """The object names the bundle's looked-at head was trained on."""
        self._require_looked_at()
        return tuple(self.manifest.looked_at.get("objects", ()))

    def _require_looked_at(self) -> None:
        if self.manifest.looked_at is None:
            raise BundleError(f"{self.bundle.path}: this bundle has no looked-at head (export "
                              "a model trained with gaze-train --looked-at)")

    def _vocabulary(self, timings: Timings) -> np.ndarray:
        """The noun embeddings of the head's training vocabulary (computed once)."""
        if self._vocab_emb is None:
            names = list(self.looked_at_vocabulary)
            self._vocab_emb = self.noun_embeddings(names, timings) if names else \
                np.zeros((0, int(self.manifest.looked_at["dim"])), np.float32)
        return self._vocab_emb

    def _label_embeddings(self, plan: _Plan, timings: Timings) -> np.ndarray:
        """The looked-at label embedding of every step of ``plan``, stitched from its
        windows' outputs - at the index's precision whether read from it or computed, so
        a search answers the same before and after its index is written."""
        from gazenlq.engine.looked_at import stitch

        self._require_looked_at()
        emb = stitch(((ws, valid, out["looked_at_emb"])
                      for _, ws, valid, out in self._outputs(plan, timings)),
                     plan.stop - plan.start, int(self.manifest.looked_at["dim"]))
        return emb.astype(vcache.ARRAYS["looked_at_emb"]).astype(np.float32)

    # -- internals ------------------------------------------------------------------------

    def _top_k(self, top_k: int | None) -> int:
        top_k = self.options.top_k if top_k is None else top_k
        if top_k < 1:
            raise ParameterError("top_k", top_k, "must be at least 1")
        return top_k

    def _encode(self, queries: Sequence[str], timings: Timings) -> _Text:
        queries = _texts(queries, "queries", "give at least one question",
                         "empty query: give the question in words")
        t0 = time.perf_counter()
        out = _Text(*self.runtime.text(queries))
        timings.text += time.perf_counter() - t0
        return out

    def _coarse_for(self, plans: list[_Plan]) -> bool:
        """Whether ``plans`` are searched coarse to fine (see ``SearchOptions.mode``)."""
        mode = self.options.mode
        if mode == "exhaustive" or self.coarse is None or not self.options.use_cache:
            return False
        if mode == "auto" and not all(vcache.can_index(p.cache, p.key) for p in plans):
            return False  # no index can be kept (read-only): every window, as --no-cache
        return mode == "coarse" or sum(len(p.windows) for p in plans) > 1

    def _search(self, plans: list[_Plan], text: _Text, timings: Timings, *, top_k: int,
                timeline: bool, on_plan: Callable[[], object] | None = None) -> list[_Scan]:
        """One scan per plan, coarse to fine or exhaustive."""
        if self._coarse_for(plans):
            return self._coarse(plans, text.tokens, text.mask, text.query_emb, timings,
                                top_k=top_k, timeline=timeline, on_plan=on_plan)
        scans = []
        for plan in plans:
            scans.append(self._scan(plan, text.tokens, text.mask, timings, top_k=top_k,
                                    timeline=timeline))
            if on_plan is not None:
                on_plan()
        return scans

    @staticmethod
    def _clip(path: Location, query: Query) -> ClipSpan:
        """The steps of ``query``'s clip in its store: a clip outside the store's steps is
        an error, one partly outside a warning (only the covered part is searched)."""
        store = FeatureStore.open(path)
        grid = store.info.grid
        span = grid.clip(*query.clip_window, store.num_steps)
        want = grid.clip_slice(*query.clip_window)
        where = (f"{path}: clip {query.clip_uid} [{span.start_s:g}, {span.end_s:g}] s")
        if span.length <= 0:
            raise StoreError(f"{where} lies outside the store's {store.num_steps} steps "
                             f"({grid.to_seconds(store.num_steps):g} s); is it the store of "
                             f"video {query.video_uid}?")
        # the official slicing is end-inclusive and the grid's last steps need a whole
        # window of frames: a clip ending with its video asks for steps past the last,
        # yet its whole time is covered
        end_s = query.clip_window[1]
        if span.first > max(want.start, 0) or (span.stop < want.stop - 1
                                               and end_s > store.info.duration_s + 1e-6):
            warn(f"{where} is only partly inside the store's {store.num_steps} steps "
                 f"({grid.to_seconds(store.num_steps):g} s); searching steps "
                 f"{span.first}-{span.stop} of {want.start}-{want.stop}")
        return span

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

    # -- the window plan and the index (per-video caches) -------------------------------

    def _plan(self, store_path: Location, start: int = 0, stop: int | None = None) -> _Plan:
        """The windows of steps ``[start, stop)`` of one store and their cache key
        (remembered while the store's metadata is unchanged: a library's hundred stores
        are not reopened for every query; a remote store is taken as unchanged while the
        engine lives)."""
        store_path = location(store_path)
        try:
            stamp = "remote" if isinstance(store_path, str) else \
                (store_path / "zarr.json").stat().st_mtime_ns
        except OSError:
            stamp = None  # FeatureStore.open names the problem
        memo = self._plans.get((store_path, start, stop))
        if memo is not None and stamp is not None and memo[0] == stamp:
            return memo[1]
        plan = self._new_plan(store_path, start, stop)
        self._plans[(store_path, start, stop)] = (stamp, plan)
        return plan

    def _new_plan(self, store_path: Location, start: int, stop: int | None) -> _Plan:
        store = FeatureStore.open(store_path)
        self._check_store(store)
        stop = store.num_steps if stop is None else stop
        n = stop - start
        length = min(self.window, pad_to(n, self.manifest.length_multiple))
        overlap = min(self.options.overlap, length - 1)
        key = vcache.cache_key(self.runtime.producer("video"), length, self.options.overlap,
                               start, stop, self._output_shapes(length))
        return _Plan(store.path, store, start, stop, length, overlap,
                     plan_windows(n, length, overlap), key,
                     vcache.cache_root(store.path, self.options.cache_dir))

    def _outputs(self, plan: _Plan, timings: Timings):
        """Yield ``(window, start, valid, outputs)`` for every window of ``plan``: from the
        cache, or from the per-video graph (read-ahead features), writing the cache."""
        t = timings
        cached = vcache.load(plan.cache, plan.key) if self.options.use_cache else None
        if cached is not None:
            for i, (ws, we) in enumerate(plan.windows):
                t0 = time.perf_counter()
                out = {name: a[i] for name, a in cached.arrays.items()}
                t.cache_read += time.perf_counter() - t0
                t.windows += 1
                t.cached_windows += 1
                yield i, ws, we - ws, out
            return
        writer = None
        if self.options.write_cache:
            writer = vcache.open_writer(plan.cache, plan.key, len(plan.windows),
                                        self._output_shapes(plan.length), {
                                            "length": plan.length,
                                            "overlap": self.options.overlap,
                                            "start": plan.start, "stop": plan.stop})
        arrays = (VIDEO, GAZE_INPUT) if self.manifest.uses_gaze else (VIDEO,)
        store, length = plan.store, plan.length
        try:
            it = store.windows(length, plan.overlap, arrays=arrays,
                               prefetch=self.options.prefetch, dtype=np.float32,
                               start=plan.start, stop=plan.stop)
            for i in range(len(plan.windows)):
                t0 = time.perf_counter()
                win = next(it)
                t.io += time.perf_counter() - t0
                valid = len(win)
                mask = np.zeros((1, length), bool)
                mask[0, :valid] = True
                video = np.zeros((1, length, store.dim(VIDEO)), np.float32)
                video[0, :valid] = win.arrays[VIDEO]
                gaze = None
                if self.manifest.uses_gaze:
                    gaze = np.zeros((1, length, store.dim(GAZE_INPUT)), np.float32)
                    gaze[0, :valid] = win.arrays[GAZE_INPUT]
                t0 = time.perf_counter()
                out = {k: v[0] for k, v in self.runtime.video(video, mask, gaze).items()}
                t.video_model += time.perf_counter() - t0
                t.windows += 1
                if writer is not None:
                    t0 = time.perf_counter()
                    writer.write(i, out)
                    t.cache_write += time.perf_counter() - t0
                yield i, win.start - plan.start, valid, out
            if writer is not None:
                t0 = time.perf_counter()
                writer.publish()
                t.cache_write += time.perf_counter() - t0
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    def _output_shapes(self, length: int) -> dict[str, tuple[int, ...]]:
        """Per-window shape of every output of the per-video graph (the cache's arrays)."""
        # the graph's own width: a late-fusion bundle caches packed pyramids (twice hidden)
        width = {t.name: t.shape[-1] for t in self.manifest.graph("video").outputs}
        shapes = {"video_emb": (length, int(width["video_emb"]))}
        if self.manifest.uses_gaze:
            shapes["gaze_emb"] = (length, int(width["gaze_emb"]))
        if self.coarse is not None:
            shapes["coarse_emb"] = (-(-length // self.coarse["span"]), self.coarse["dim"])
        if self.manifest.looked_at is not None:
            shapes["looked_at_emb"] = (length, int(self.manifest.looked_at["dim"]))
        return shapes

    def _index(self, plan: _Plan, timings: Timings) -> vcache.CachedEmbeddings:
        """The published cache of ``plan``, built first when missing (kept open: a cache's
        key names its content, so a published one never changes)."""
        cached = self._caches.get((plan.path, plan.key))
        if cached is not None and cached.intact():
            return cached
        cached = vcache.load(plan.cache, plan.key)
        if cached is None:
            for _ in self._outputs(plan, timings):
                pass
            cached = vcache.load(plan.cache, plan.key)
        if cached is None:
            raise StoreError(f"{plan.cache}: the index could not be written (read-only or "
                             "full?); give a cache_dir (--cache-dir) or search it with "
                             "mode='exhaustive'")
        self._caches[(plan.path, plan.key)] = cached
        return cached

    # -- exhaustive: every window ---------------------------------------------------------

    def _scan(self, plan: _Plan, tokens: np.ndarray, text_mask: np.ndarray,
              timings: Timings, *, top_k: int, timeline: bool = False) -> _Scan:
        """Search every window of ``plan`` for every query; the moments are
        ``(segment, score)`` with the segment in steps relative to the plan's start."""
        q = len(tokens)
        cands: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        curves = [np.zeros(plan.stop - plan.start, np.float32) for _ in range(q)] \
            if timeline else []
        pending: list[_Row] = []  # windows waiting for one fused call of the ground graph
        per_call = max(1, self._rows(plan.length) // max(q, 1))
        for _, ws, valid, out in self._outputs(plan, timings):
            pending += [_Row(qi, ws, valid, out["video_emb"], out.get("gaze_emb"))
                        for qi in range(q)]
            if len(pending) >= per_call * q:
                self._ground(pending, plan.length, tokens, text_mask, cands, curves, timings)
                pending = []
        if pending:
            self._ground(pending, plan.length, tokens, text_mask, cands, curves, timings)
        return _Scan(self._nms(cands, q, top_k, timings), curves)

    # -- coarse to fine: the best spans' regions only -------------------------------------

    def _coarse(self, plans: list[_Plan], tokens: np.ndarray, text_mask: np.ndarray,
                query_emb: np.ndarray, timings: Timings, *, top_k: int,
                timeline: bool = False, on_plan: Callable[[], object] | None = None
                ) -> list[_Scan]:
        """Search ``plans`` (one store range each) for every query, coarse to fine: the
        library's span scores pick each query's ``candidates`` best spans, and the ground
        graph runs only on their regions. One scan per plan, as :meth:`_scan` returns."""
        from gazenlq.engine.coarse import SpanIndex, StoreSpans

        t = timings
        q = len(tokens)
        indexes = []
        for plan in plans:
            indexes.append(self._index(plan, t))
            if on_plan is not None:
                on_plan()
        t0 = time.perf_counter()
        key = tuple((p.path, p.key) for p in plans)
        if self._library is not None and self._library[0] == key:
            library = self._library[1]
        else:
            library = SpanIndex([StoreSpans(p.path, c.coarse, np.array(
                [a for a, _ in p.windows]), np.array([b - a for a, b in p.windows]))
                for p, c in zip(plans, indexes)], self.coarse["span"],
                ann_min_spans=self.options.ann_min_spans)
            self._library = (key, library)
        top = library.nearest(query_emb, self.options.candidates)
        t.coarse += time.perf_counter() - t0
        by_plan: dict[int, list[_Row]] = defaultdict(list)
        multiple = self.manifest.length_multiple
        for qi in range(q):
            for r in library.regions(top[qi], context=self.options.context,
                                     multiple=multiple):
                plan, cached = plans[r.store], indexes[r.store]
                ws = plan.windows[r.window][0]
                # the region's steps up to its padded length (the cached window's are
                # padded too, with zeros past its valid steps - except a late-fusion
                # pyramid's coarser points, packed at later steps): the whole window is
                # exactly its exhaustive row
                rows = slice(r.start, r.start + pad_to(r.stop - r.start, multiple))
                t.fine_steps += r.stop - r.start
                by_plan[r.store].append(_Row(
                    qi, ws + r.start, r.stop - r.start, cached.video[r.window, rows],
                    None if cached.gaze is None else cached.gaze[r.window, rows]))
        scans = []
        for p, plan in enumerate(plans):
            cands: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
            curves = [np.zeros(plan.stop - plan.start, np.float32) for _ in range(q)] \
                if timeline else []
            rows = sorted(by_plan.get(p, []), key=lambda r: (r.start, r.query))
            for length, group in self._by_length(rows):
                self._ground(group, length, tokens, text_mask, cands, curves, t)
            scans.append(_Scan(self._nms(cands, q, top_k, t), curves))
        return scans

    def _by_length(self, rows: list[_Row]) -> list[tuple[int, list[_Row]]]:
        """Rows grouped by their padded length (a whole window keeps its own)."""
        groups: dict[int, list[_Row]] = defaultdict(list)
        for r in rows:
            groups[pad_to(len(r.video), self.manifest.length_multiple)].append(r)
        return sorted(groups.items())

    # -- the fine model and post-processing -------------------------------------------

    def _rows(self, length: int) -> int:
        """Rows per call of the per-query graph for windows of ``length`` steps."""
        return max(1, min(self.options.batch, self.options.fuse_steps // length))

    def _ground(self, rows: list[_Row], length: int, tokens: np.ndarray,
                text_mask: np.ndarray, cands, curves, timings: Timings) -> None:
        """The ground graph on fused batches of (window or region, query) rows - at most
        ``options.batch`` rows and ``fuse_steps`` steps per call - then decoding of every
        row; rows shorter than ``length`` are zero-padded and masked."""
        from gazenlq.kernels import decode_rows

        t = timings
        sizes = level_sizes(length, len(self.strides))
        post = self.post
        step = self._rows(length)
        h = rows[0].video.shape[-1] if rows else 0
        for r0 in range(0, len(rows), step):
            chunk = rows[r0:r0 + step]
            b = len(chunk)
            video_emb = np.zeros((b, length, h), np.float32)
            gaze_emb = None if chunk[0].gaze is None else np.zeros((b, length, h), np.float32)
            mask = np.zeros((b, length), bool)
            for j, r in enumerate(chunk):
                video_emb[j, :len(r.video)] = r.video
                if gaze_emb is not None:
                    gaze_emb[j, :len(r.gaze)] = r.gaze
                mask[j, :r.valid] = True
            qi = [r.query for r in chunk]
            t0 = time.perf_counter()
            logits, dists, pmask = self.runtime.ground(video_emb, gaze_emb, mask, tokens[qi],
                                                       text_mask[qi])
            t.ground_model += time.perf_counter() - t0
            t0 = time.perf_counter()
            logits = np.where(pmask, logits, -np.inf).astype(np.float32)
            decoded = decode_rows(logits, dists, sizes, self.strides,
                                  score_threshold=post.score_threshold,
                                  pre_nms_topk=post.pre_nms_topk, min_length=post.min_length)
            for j, (r, cand) in enumerate(zip(chunk, decoded)):
                cands[r.query].append((cand.segments + np.float32(r.start), cand.scores))
                if curves:
                    prob = 1 / (1 + np.exp(-logits[j, :r.valid]))
                    seg = curves[r.query][r.start:r.start + r.valid]
                    np.maximum(seg, prob, out=seg)
            t.postprocess += time.perf_counter() - t0

    def _nms(self, cands, q: int, top_k: int, timings: Timings
             ) -> list[list[tuple[list[float], float]]]:
        """One Soft-NMS per query over all its windows' or regions' candidates."""
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
        timings.postprocess += time.perf_counter() - t0
        return moments
