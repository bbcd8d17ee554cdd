"""Proof that an exported bundle computes what PyTorch computes.

Two checks, both run by every export and by ``gaze-export --check --checkpoint``:
- per-graph parity: onnxruntime (``ORT_ENABLE_BASIC``, CPU provider) against the PyTorch
  module on fresh random inputs at several sizes other than the traced one, rows padded to
  different valid lengths; the max abs difference of every output over valid positions;
- end to end: text -> video -> ground -> decode + Soft-NMS (``gazenlq.kernels``) on both
  backends for many queries; the share of queries whose top-5 segments agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from gazenlq.bundle import PostprocessConfig, level_sizes
from gazenlq.export.graphs import GraphDef, random_inputs
from gazenlq.kernels import NMSResult, iou_matrix, postprocess_query
from gazenlq.text import QueryTokenizer
from gazenlq.training.data import ClipItem
from gazenlq.training.infer import clip_inputs

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

TOLERANCE = 1e-4
SEGMENT_ATOL = 1e-3  # steps
MATCH_IOU = 0.9  # fp16 segments match fp32 ones at this IoU
TIE_RTOL = 1e-3  # reference scores this close are a tie
# Target lengths in steps, rounded up to each graph's length multiple; text lengths.
LENGTHS = (90, 250, 650)
TEXT_LENGTHS = (4, 13, 32)
BATCH = 3
CHUNK = 32


def ort_session(path: Path, threads: int = 0) -> InferenceSession:
    """An onnxruntime CPU session at ``ORT_ENABLE_BASIC`` (the parity level)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Backend(Protocol):
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class TorchBackend:
    """The PyTorch modules of :func:`gazenlq.export.graphs.graph_defs`."""

    def __init__(self, graphs: dict[str, GraphDef]) -> None:
        self.graphs = graphs

    @torch.no_grad()
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self.graphs[graph]
        out = g.module(*(torch.from_numpy(np.ascontiguousarray(feeds[s.name]))
                         for s in g.inputs))
        out = (out,) if isinstance(out, torch.Tensor) else out
        return {s.name: o.numpy() for s, o in zip(g.outputs, out)}


class OrtBackend:
    """onnxruntime sessions by graph name."""

    def __init__(self, sessions: dict[str, InferenceSession]) -> None:
        self.sessions = sessions

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.sessions[graph]
        out = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
        return {o.name: v for o, v in zip(s.get_outputs(), out)}


@dataclass(frozen=True)
class ParityRow:
    graph: str
    output: str
    size: str  # batch x length (x text length)
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)


def validation_sizes(graph: GraphDef) -> list[dict[str, int]]:
    """Three sizes other than the traced one, lengths rounded up to the graph's multiple."""
    m = graph.length_multiple
    return [{"batch": BATCH, "length": -(-n // m) * m, "text_length": t}
            for n, t in zip(LENGTHS, TEXT_LENGTHS)]


def max_abs_diff(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None) -> float:
    """Largest absolute difference over the ``valid`` positions (inf if shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    if valid is not None:
        a, b = a[valid.astype(bool)], b[valid.astype(bool)]
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def graph_parity(graph: GraphDef, session: InferenceSession, rng: np.random.Generator, *,
                 vocab: int, tolerance: float = TOLERANCE) -> list[ParityRow]:
    """Max abs difference of every output over valid positions, at each validation size."""
    rows = []
    ref_backend = TorchBackend({graph.name: graph})
    ort_backend = OrtBackend({graph.name: session})
    for sizes in validation_sizes(graph):
        feeds = random_inputs(graph, sizes, rng, vocab=vocab)
        ref = ref_backend.run(graph.name, feeds)
        got = ort_backend.run(graph.name, feeds)
        tensors = {**feeds, **ref}
        label = "x".join(str(sizes[a]) for a in ("batch", "length", "text_length")
                         if any(a in s.shape for s in graph.inputs))
        for spec in graph.outputs:
            mask = graph.valid.get(spec.name)
            rows.append(ParityRow(graph.name, spec.name, label,
                                  max_abs_diff(ref[spec.name], got[spec.name],
                                            None if mask is None else tensors[mask]),
                                  tolerance))
    return rows


@dataclass(frozen=True)
class Case:
    """One clip and its queries: video-graph feeds (batch 1) and text-graph feeds."""

    video: dict[str, np.ndarray]
    text: dict[str, np.ndarray]


def predict_case(backend: Backend, case: Case, strides: Sequence[int],
                 post: PostprocessConfig | None = None) -> list[NMSResult]:
    """Top-k segments (in steps) of every query of ``case``, as ``infer.predict`` decodes."""
    emb = backend.run("video", case.video)
    mask = case.video["mask"]
    sizes = level_sizes(mask.shape[1], len(strides))
    results = []
    for c in range(0, len(case.text["input_ids"]), CHUNK):
        text = {k: v[c:c + CHUNK] for k, v in case.text.items()}
        q = len(text["input_ids"])
        feeds = {k: np.repeat(v, q, axis=0) for k, v in {**emb, "mask": mask}.items()}
        feeds["tokens"] = backend.run("text", text)["features"]
        feeds["text_mask"] = text["attention_mask"] > 0
        out = backend.run("ground", feeds)
        logits = np.where(out["point_mask"], out["logits"], -np.inf)
        results += [postprocess_query(lg, d, sizes, strides, config=post)
                    for lg, d in zip(logits, out["distances"])]
    return results


def random_cases(graphs: dict[str, GraphDef], rng: np.random.Generator, *, vocab: int,
                 queries: int = 24) -> list[Case]:
    """One random clip per validation length (the last two) with ``queries`` random queries."""
    cases = []
    video, text = graphs["video"], graphs["text"]
    for sizes in validation_sizes(graphs["ground"])[1:]:
        length = sizes["length"]
        feeds = random_inputs(video, {"batch": 1, "length": length}, rng, vocab=vocab)
        valid = int(rng.integers(length // 2, length + 1))  # the clip ends before the pad
        for x in feeds.values():
            x[:, valid:] = 0
        tokens = random_inputs(text, {"batch": queries, "text_length": TEXT_LENGTHS[-1]}, rng,
                               vocab=vocab)
        cases.append(Case(feeds, tokens))
    return cases


class _RawGaze:
    """Stands in for the estimator in ``infer.clip_inputs`` to get the padded raw gaze
    features: the bundle computes the gaze tokens inside its video graph."""

    @staticmethod
    def gaze_tokens(feats: torch.Tensor, mask: torch.Tensor, variant: str) -> torch.Tensor:
        return feats


def clip_cases(items: Sequence[ClipItem], tokenizer: QueryTokenizer, multiple: int,
               uses_gaze: bool) -> list[Case]:
    """Real clips and their query texts (e.g. a val split), padded as ``infer`` pads."""
    cases = []
    for item in items:
        video, mask, gaze = clip_inputs(item, multiple, _RawGaze() if uses_gaze else None,
                                        "gaze")
        feeds = {"video": video.numpy(), "mask": mask.numpy()}
        if gaze is not None:
            feeds["gaze_features"] = gaze.numpy()
        ids, attention = tokenizer([q.text for q in item.queries])
        cases.append(Case(feeds, {"input_ids": ids, "attention_mask": attention}))
    return cases


@dataclass(frozen=True)
class Agreement:
    """How often another backend's segments agree with the reference's, per query."""

    queries: int
    top5: float  # identical ordered top-5 (within SEGMENT_ATOL steps): the fp32 criterion
    top5_iou: float  # ordered top-5 pairwise IoU >= MATCH_IOU
    top1: float  # top-1 IoU >= MATCH_IOU
    top1_ties: float  # the same, or the other top-1 ties the reference's: the fp16 criterion

    def as_dict(self) -> dict[str, float]:
        return {"queries": self.queries, "top5": self.top5, "top5_iou": self.top5_iou,
                "top1": self.top1, "top1_ties": self.top1_ties}


def _ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two ordered segment lists (0 where one list is shorter)."""
    n = min(len(a), len(b))
    out = np.zeros(max(len(a), len(b)), np.float32)
    if n:
        out[:n] = np.diagonal(iou_matrix(a[:n], b[:n]))
    return out


def _ties_top1(ref: NMSResult, other: NMSResult) -> bool:
    """``other``'s top-1 is a reference candidate scored within TIE_RTOL of the reference's
    top-1: the reference cannot tell the two apart, so either is its answer."""
    if not (len(ref.segments) and len(other.segments)):
        return False
    match = iou_matrix(other.segments[:1], ref.segments)[0] >= MATCH_IOU
    return bool((match & (ref.scores >= ref.scores[0] * (1 - TIE_RTOL))).any())


def agreement(ref: Sequence[NMSResult], other: Sequence[NMSResult]) -> Agreement:
    top5 = top5_iou = top1 = top1_ties = 0
    for a, b in zip(ref, other, strict=True):
        sa, sb = a.segments, b.segments
        top5 += sa.shape == sb.shape and np.allclose(sa, sb, rtol=0, atol=SEGMENT_ATOL)
        ious = _ious(sa, sb)
        top5_iou += bool((ious >= MATCH_IOU).all())
        same = bool(ious[:1].min(initial=1.0) >= MATCH_IOU)
        top1 += same
        top1_ties += same or _ties_top1(a, b)
    n = max(len(ref), 1)
    return Agreement(len(ref), top5 / n, top5_iou / n, top1 / n, top1_ties / n)


def compare_backends(ref: Backend, others: dict[str, Backend], cases: Sequence[Case],
                     strides: Sequence[int], post: PostprocessConfig | None = None
                     ) -> dict[str, Agreement]:
    """Agreement of each of ``others`` with ``ref`` over every query of ``cases``."""
    expected = [r for case in cases for r in predict_case(ref, case, strides, post)]
    return {name: agreement(expected, [r for case in cases
                                       for r in predict_case(b, case, strides, post)])
            for name, b in others.items()}
