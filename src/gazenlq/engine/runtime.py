"""Sessions of a bundle's three graphs behind small typed calls: ONNX Runtime, or the
bundle's native TensorRT engines.

Providers are always explicit: CPU by default; CUDA or TensorRT (through onnxruntime-gpu's
execution providers) when asked and present, else a one-line error. onnxruntime falls back
silently (to the CPU when the CUDA provider cannot load, to CUDA when TensorRT cannot), so
every session's providers are checked after it is made and a fallback is refused. The
TensorRT provider gets an engine cache, fp16 when asked, and the same min/opt/max profiles
``gaze-export --trt`` builds native engines with; calls with more rows than a profile's
max batch are split, and a length outside it is one error line.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gazenlq.bundle.manifest import (
    MANIFEST,
    PRECISIONS,
    BundleError,
    GraphSpec,
    Manifest,
    bundle_file,
    verify_bundle,
)
from gazenlq.bundle.trt import (
    BATCH,
    ROWS_PER_CALL,
    ShapeRange,
    axis_ranges,
    check_fits,
    profile_bounds,
    profile_shapes,
    row_chunks,
)
from gazenlq.errors import GazeNLQError, MissingDependencyError, ParameterError
from gazenlq.text.tokenizer import QueryTokenizer

TENSORRT_EP = "TensorrtExecutionProvider"
DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": [TENSORRT_EP, "CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt-native": [],  # the bundle's own TensorRT engines (gaze-export --trt)
}
NATIVE = "TensorRT (native engine)"
GRAPHS = ("text", "video", "ground")
TEXT_ROWS = 64
"""Texts per call of the text graph (sorted by length; see :meth:`Runtime._text`)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how the graphs run."""

    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    """Intra-op threads (default: all cores); other pools (zarr, numba) share them."""


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("gaze-search needs onnxruntime: pip install "
                                     "'gazenlq[engine]' (or 'gazenlq[gpu]')") from None
    return ort


def verify_providers(device: str, got: list[str], graph: str) -> None:
    """Refuse a session whose first provider is not the one ``device`` asked for:
    onnxruntime falls back without an error when a provider cannot load."""
    want = DEVICES[device][0]
    if not got or got[0] != want:
        raise GazeNLQError(f"device {device!r}: onnxruntime could not load {want} for "
                           f"{graph} and fell back to {', '.join(got) or 'nothing'}; check "
                           "the CUDA / cuDNN / TensorRT libraries onnxruntime-gpu needs "
                           "(see its log above)")


def _load_session(ort, path: Path, spec: GraphSpec, so, providers: list[Any]):
    """The onnxruntime session of the graph file ``path``: a file it cannot load is one
    line naming it, and its I/O names must be the manifest's (``spec``)."""
    try:
        session = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BundleError(f"{path}: onnxruntime cannot load it "
                          f"({' '.join(str(exc).split())[:200]})") from None
    for kind, got, want in (("inputs", session.get_inputs(), spec.inputs),
                            ("outputs", session.get_outputs(), spec.outputs)):
        names, expected = [t.name for t in got], [t.name for t in want]
        if sorted(names) != sorted(expected):
            raise BundleError(f"{path}: graph {kind} {', '.join(names)} differ from "
                              f"{MANIFEST}'s {', '.join(expected)}; re-export the bundle")
    return session


def shape_option(profiles: dict[str, ShapeRange], key: str) -> str:
    """onnxruntime's profile syntax: ``input:d0xd1,input2:d0xd1xd2``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[key])}"
                    for name, shapes in profiles.items())


def tensorrt_provider_options(profiles: dict[str, ShapeRange], *, fp16: bool,
                              cache_dir: Path) -> dict[str, str]:
    """Options of onnxruntime's TensorRT provider for one graph: engine and timing caches
    in ``cache_dir`` (built once per machine, not per process), fp16 when asked, and
    explicit min/opt/max shapes (one engine for every shape of the search, not a rebuild
    whenever a new one appears)."""
    return {"trt_fp16_enable": str(fp16), "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache_dir),
            **{f"trt_profile_{key}_shapes": shape_option(profiles, key)
               for key in ("min", "opt", "max")}}


def tensorrt_cache_dir(graph_sha256: str, precision: str, profiles: dict[str, ShapeRange]
                       ) -> Path:
    """The user's cache directory of onnxruntime's TensorRT engines of one graph,
    precision and profile (onnxruntime names its files by model and GPU inside)."""
    from platformdirs import user_cache_path

    key = hashlib.sha256(json.dumps([graph_sha256, precision, profiles],
                                    sort_keys=True).encode()).hexdigest()[:16]
    return user_cache_path("gazenlq", appauthor=False) / "ort-tensorrt" / key


class Runtime:
    """A verified bundle with one session per graph and its tokenizer.

    ``max_length`` (the search window; default the manifest's max length) and
    ``max_batch`` (rows per call) size the TensorRT provider's profiles; native engines
    bring their own (a window longer than theirs is refused here)."""

    def __init__(self, bundle: str | os.PathLike, options: RuntimeOptions = RuntimeOptions(),
                 *, max_length: int | None = None, max_batch: int | None = None) -> None:
        self.path = Path(bundle)
        self.closed = False
        self.manifest: Manifest = verify_bundle(self.path)
        m = self.manifest
        if options.device not in DEVICES:
            raise ParameterError("device", options.device, f"expected {', '.join(DEVICES)}")
        if options.precision not in PRECISIONS:
            raise ParameterError("precision", options.precision,
                                 f"expected {', '.join(PRECISIONS)}")
        self.device, self.precision = options.device, options.precision
        tok = m.text
        self.tokenizer = QueryTokenizer(bundle_file(self.path, m.tokenizer),
                                        int(tok.get("max_tokens", 32)))
        self.uses_gaze = m.uses_gaze
        self.bounds: dict[str, dict[str, tuple[int, int]]] = {}
        """Per graph: (min, max) of each named axis where a TensorRT profile limits it."""
        self.providers: dict[str, list[str]] = {}
        """Per graph: what really runs it (the session's providers, in order)."""
        if options.device == "trt-native":
            self._open_native(max_length)
            return
        self.specs: dict[str, GraphSpec] = {name: m.graph(name, self.precision)
                                            for name in GRAPHS}
        ort = _ort()
        providers: list[Any] = list(DEVICES[options.device])
        if providers[0] not in ort.get_available_providers():
            have = ", ".join(ort.get_available_providers())
            raise GazeNLQError(f"device {options.device!r} needs {providers[0]}, which this "
                               f"onnxruntime lacks (it has {have}); install onnxruntime-gpu "
                               "on a CUDA machine")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        ranges = None
        if options.device == "tensorrt":
            ranges = axis_ranges(length_multiple=m.length_multiple,
                                 max_tokens=self.tokenizer.max_tokens,
                                 max_length=max_length or m.max_len,
                                 max_batch=max_batch or ROWS_PER_CALL)

        def make(name: str):
            spec = self.specs[name]
            chain = providers
            if ranges is not None:
                profiles = profile_shapes(spec, ranges)
                self.bounds[name] = profile_bounds(spec, profiles)
                cache = tensorrt_cache_dir(m.files[spec.file].sha256, self.precision,
                                           profiles)
                cache.mkdir(parents=True, exist_ok=True)
                chain = [(TENSORRT_EP, tensorrt_provider_options(
                    profiles, fp16=self.precision == "fp16", cache_dir=cache)), *providers[1:]]
            session = _load_session(ort, bundle_file(self.path, spec.file), spec, so, chain)
            verify_providers(options.device, session.get_providers(), spec.file)
            self.providers[name] = session.get_providers()
            return session

        self._make = make
        # the video graph loads on first use: a search served by caches never needs it; the
        # other two load at once (ONNX Runtime builds sessions without holding the GIL)
        with ThreadPoolExecutor(2, thread_name_prefix="gazenlq-session") as pool:
            made = {name: pool.submit(self._make, name) for name in ("text", "ground")}
            self.sessions = {name: future.result() for name, future in made.items()}

    def _open_native(self, max_length: int | None) -> None:
        from gazenlq.engine.trt import TrtGraph

        self.sessions = {}
        try:
            for name in GRAPHS:
                self.sessions[name] = TrtGraph(self.path, self.manifest, name, self.precision)
            self.bounds = {name: g.bounds for name, g in self.sessions.items()}
            window = max_length or self.manifest.max_len
            longest = min(b["length"][1] for b in self.bounds.values() if "length" in b)
            if window > longest:
                raise ParameterError("window", window, f"the {self.precision} TensorRT "
                                     f"engines accept at most {longest} steps; rebuild them "
                                     f"with gaze-export BUNDLE --trt --trt-max-length {window}")
        except BaseException:
            self.close()
            raise
        self.specs = {name: g.spec for name, g in self.sessions.items()}
        self.providers = {name: [NATIVE] for name in GRAPHS}
        self._make = self.sessions.__getitem__

    def producer(self, name: str) -> tuple[str, str, str]:
        """What computes graph ``name``'s outputs: the sha256 of its ONNX graph (for native
        engines, the graph they were built from), the device and the precision."""
        return self.manifest.files[self.specs[name].file].sha256, self.device, self.precision

    def close(self) -> None:
        """Release the native engines' GPU buffers and streams and drop every session (ONNX
        Runtime's release theirs when collected); idempotent."""
        sessions, self.sessions = getattr(self, "sessions", {}), {}
        self.closed = True
        for session in sessions.values():
            if hasattr(session, "close"):
                session.close()

    def _call(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.sessions[name]
        if hasattr(session, "engine"):  # native engines return their spec's outputs in order
            return session.run(feeds)
        # by name: a graph listing its outputs in another order must not swap them
        return session.run([t.name for t in self.specs[name].outputs], feeds)

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.closed:
            raise GazeNLQError(f"{self.path}: this engine was closed; load the bundle again")
        spec = self.specs[name]
        if name not in self.sessions:
            self.sessions[name] = self._make(name)
        dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        feeds = {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feeds.items()}
        bounds = self.bounds.get(name)
        if bounds is None:
            outs = self._call(name, feeds)
        else:  # a TensorRT profile: lengths must fit, rows are split to fit
            check_fits(spec, bounds, {k: v.shape for k, v in feeds.items()},
                       f"{self.device} {spec.file}")
            rows = next(iter(feeds.values())).shape[0]
            parts = [self._call(name, {k: v[c] for k, v in feeds.items()})
                     for c in row_chunks(rows, bounds[BATCH][1])]
            outs = parts[0] if len(parts) == 1 else [np.concatenate(o) for o in zip(*parts)]
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]

    def _named(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[name]
        return dict(zip((t.name for t in spec.outputs), self._run(name, feeds)))

    def _text(self, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The text graph's outputs of ``texts`` by name, and the token mask ``[Q, L]``.

        The texts run sorted by length, ``TEXT_ROWS`` per call, each call padded to its
        own longest text only: a file of questions costs what its tokens cost, not what
        its longest question times its count would (benchmarks/RESULTS.md, "Long
        videos"). Outputs along the token axis come back padded to the batch's longest
        with zeros where the mask is False; per-text outputs in the texts' order."""
        tok = self.tokenizer(texts)
        lengths = tok.attention_mask.sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        along = {t.name for t in self.specs["text"].outputs if "text_length" in t.shape}
        out: dict[str, np.ndarray] = {}
        for c in range(0, len(texts), TEXT_ROWS):
            rows = order[c:c + TEXT_ROWS]
            width = int(lengths[rows].max())
            got = self._named("text", {"input_ids": tok.input_ids[rows, :width],
                                       "attention_mask": tok.attention_mask[rows, :width]})
            for name, value in got.items():
                if name not in out:
                    shape = ((len(texts), tok.input_ids.shape[1]) if name in along
                             else (len(texts),))
                    out[name] = np.zeros((*shape, *value.shape[len(shape):]), value.dtype)
                if name in along:
                    out[name][rows, :width] = value
                else:
                    out[name][rows] = value
        return out, tok.attention_mask.astype(bool)

    def text(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Token features ``[Q, L, D]`` (zero where the mask is False), mask ``[Q, L]``
        (bool) and, for bundles with a coarse stage, the query embeddings ``[Q, dim]``."""
        out, mask = self._text(queries)
        return out["features"], mask, out.get("query_emb")

    def nouns(self, texts: list[str]) -> np.ndarray:
        """The noun embeddings ``[Q, D]`` of ``texts`` (bundles with a looked-at head)."""
        return self._text(texts)[0]["noun_emb"]

    def video(self, video: np.ndarray, mask: np.ndarray, gaze: np.ndarray | None
              ) -> dict[str, np.ndarray]:
        """Query-independent outputs of padded windows ``[B, T, *]`` by name: ``video_emb``
        (+ ``gaze_emb``) (+ ``coarse_emb``) (+ ``looked_at_emb``)."""
        feeds = {"video": video, "mask": mask}
        if self.uses_gaze:
            feeds["gaze_features"] = gaze
        return self._named("video", feeds)

    def ground(self, video_emb: np.ndarray, gaze_emb: np.ndarray | None, mask: np.ndarray,
               tokens: np.ndarray, text_mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-row logits ``[B, P]``, distances ``[B, P, 2]`` and point mask ``[B, P]``."""
        feeds = {"video_emb": video_emb, "mask": mask, "tokens": tokens,
                 "text_mask": text_mask}
        if self.uses_gaze:
            feeds["gaze_emb"] = gaze_emb
        out = self._named("ground", feeds)  # by name: the manifest's order is not trusted
        return out["logits"], out["distances"], out["point_mask"]
