"""ONNX Runtime sessions of a bundle: the three graphs behind small typed calls.

Providers are always explicit: CPU by default; CUDA or TensorRT (through onnxruntime-gpu's
execution providers) when asked and present, else a one-line error.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazenlq.bundle.manifest import (
    MANIFEST,
    PRECISIONS,
    BundleError,
    Manifest,
    bundle_file,
    verify_bundle,
)
from gazenlq.errors import GazeNLQError, MissingDependencyError, ParameterError
from gazenlq.text.tokenizer import QueryTokenizer

DEVICES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt-native": [],  # the bundle's own TensorRT engines (gaze-export --trt)
}


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


class Runtime:
    """A verified bundle with one inference session per graph and its tokenizer."""

    def __init__(self, bundle: str | os.PathLike, options: RuntimeOptions = RuntimeOptions()
                 ) -> None:
        self.path = Path(bundle)
        self.manifest: Manifest = verify_bundle(self.path)
        if options.device not in DEVICES:
            raise ParameterError("device", options.device, f"expected {', '.join(DEVICES)}")
        if options.precision not in PRECISIONS:
            raise ParameterError("precision", options.precision,
                                 f"expected {', '.join(PRECISIONS)}")
        self.precision = options.precision
        tok = self.manifest.text
        self.tokenizer = QueryTokenizer(bundle_file(self.path, self.manifest.tokenizer),
                                        int(tok.get("max_tokens", 32)))
        self.uses_gaze = self.manifest.uses_gaze
        if options.device == "trt-native":
            from gazenlq.engine.trt import TrtGraph

            graphs = {n: TrtGraph(self.path, self.manifest, self.manifest.graph(
                n, self._trt_precision())) for n in ("text", "video", "ground")}
            self._make = lambda name: graphs[name]
            self.sessions = graphs
            return
        ort = _ort()
        providers = DEVICES[options.device]
        if providers[0] not in ort.get_available_providers():
            have = ", ".join(ort.get_available_providers())
            raise GazeNLQError(f"device {options.device!r} needs {providers[0]}, which this "
                               f"onnxruntime lacks (it has {have}); install onnxruntime-gpu "
                               "on a CUDA machine")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads or os.cpu_count() or 1
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._make = lambda name: self._session(ort, name, so, providers)
        # the video graph loads on first use: a search served by caches never needs it; the
        # other two load at once (ONNX Runtime builds sessions without holding the GIL)
        with ThreadPoolExecutor(2, thread_name_prefix="gazenlq-session") as pool:
            made = {name: pool.submit(self._make, name) for name in ("text", "ground")}
            self.sessions = {name: future.result() for name, future in made.items()}

    def _session(self, ort, name: str, so, providers: list[str]):
        """The session of graph ``name``; its I/O names must be the manifest's."""
        spec = self.manifest.graph(name, self.precision)
        path = bundle_file(self.path, spec.file)
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

    def _trt_precision(self) -> str:
        """Engines record the graph they were built from; its I/O is that graph's."""
        return self.precision if self.precision in self.manifest.graphs else "fp32"

    def _run(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        spec = self.manifest.graph(name, self.precision)
        if name not in self.sessions:
            self.sessions[name] = self._make(name)
        dtypes = {t.name: np.dtype(t.dtype) for t in spec.inputs}
        feeds = {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feeds.items()}
        session = self.sessions[name]
        outs = session.run(feeds) if hasattr(session, "engine") else session.run(
            [t.name for t in spec.outputs], feeds)
        return [o.astype(np.float32) if o.dtype == np.float16 else o for o in outs]

    def _named(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.manifest.graph(name, self.precision)
        return dict(zip((t.name for t in spec.outputs), self._run(name, feeds)))

    def text(self, queries: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Token features ``[Q, L, D]``, mask ``[Q, L]`` (bool) and, for bundles with a
        coarse stage, the query embeddings ``[Q, dim]`` of the queries."""
        tok = self.tokenizer(queries)
        out = self._named("text", {"input_ids": tok.input_ids,
                                   "attention_mask": tok.attention_mask})
        return out["features"], tok.attention_mask.astype(bool), out.get("query_emb")

    def video(self, video: np.ndarray, mask: np.ndarray, gaze: np.ndarray | None
              ) -> dict[str, np.ndarray]:
        """Query-independent outputs of padded windows ``[B, T, *]`` by name: ``video_emb``
        (+ ``gaze_emb``) (+ ``coarse_emb``)."""
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
