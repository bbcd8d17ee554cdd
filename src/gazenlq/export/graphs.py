"""The three exported graphs as PyTorch modules, with their I/O specs and random inputs.

- ``text``: frozen query encoder, ``input_ids, attention_mask -> features [, query_emb]
  [, noun_emb]``;
- ``video``: per-video half, ``video, mask [, gaze_features] -> video_emb [, gaze_emb]
  [, coarse_emb] [, looked_at_emb]``; for a late-fusion model ``video_emb`` and
  ``gaze_emb`` are the packed pyramids (``training.pyramid``, twice the hidden width) and
  the length is a multiple of ``length_multiple``; for the gaze variants the gaze tokens (of the
  stage-1 estimator or of the attention pool, ``GazeNLQ.gaze_source``) are computed inside
  it; ``query_emb`` and ``coarse_emb`` (models with a coarse stage) are the query and span
  embeddings of coarse-to-fine search; ``noun_emb`` and ``looked_at_emb`` (models with a
  semantic head) the noun embedding of the text and each step's looked-at label
  embedding, compared by cosine similarity (``training.semantic``);
- ``ground``: per-query half, ``video_emb, mask, tokens, text_mask [, gaze_emb] ->
  logits, distances, point_mask``; its length must be a multiple of ``length_multiple``.

One table (:func:`graph_defs`) drives the export, the validation and the TensorRT profiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gazenlq.bundle.manifest import TensorSpec
from gazenlq.errors import GazeNLQError
from gazenlq.training import checkpoint
from gazenlq.training.config import TrainConfig
from gazenlq.training.model import GazeNLQ
from gazenlq.training.pyramid import pack
from gazenlq.training.semantic import noun_embedding

GRAPHS = ("text", "video", "ground")


class TextGraph(nn.Module):
    """The frozen query encoder's token features (+ the coarse stage's query embedding)
    (+ the noun embedding the semantic head's label embeddings are compared with)."""

    def __init__(self, model: GazeNLQ, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.coarse = encoder, model.coarse
        self.semantic = model.semantic is not None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        features = self.encoder(input_ids, attention_mask)
        out = (features,)
        if self.coarse is not None:
            out = (*out, self.coarse.query(features, attention_mask))
        if self.semantic:
            out = (*out, noun_embedding(features, attention_mask))
        return out


class VideoGraph(nn.Module):
    """Query-independent half: video embedding (+ gaze tokens -> gaze context) (+ the coarse
    stage's span embeddings) (+ the semantic head's looked-at label embeddings)."""

    def __init__(self, model: GazeNLQ) -> None:
        super().__init__()
        self.grounding, self.estimator = model.grounding, model.gaze_source
        self.coarse, self.semantic = model.coarse, model.semantic
        self.variant = model.cfg.grounding.gaze

    def forward(self, video: torch.Tensor, mask: torch.Tensor,
                gaze_features: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        gaze = None
        if self.estimator is not None:
            gaze = self.estimator.gaze_tokens(gaze_features, mask, self.variant)
        v, g = self.grounding.embed_video(video, mask, gaze)
        if self.grounding.late_fusion:
            feats, _, levels = self.grounding.pyramid(v, g, mask)
            out = (pack(feats),) if levels is None else (pack(feats), pack(levels))
        else:
            out = (v,) if g is None else (v, g)
        if self.coarse is not None:
            out = (*out, self.coarse.spans(v, g, mask))
        if self.semantic is not None:
            out = (*out, self.semantic(v, gaze, mask))
        return out


class GroundGraph(nn.Module):
    """Per-query half: text encoding, fusion, pyramid and heads - or, late fusion, the query
    gate and the light head on the packed pyramid's points."""

    def __init__(self, model: GazeNLQ) -> None:
        super().__init__()
        self.grounding = model.grounding

    def forward(self, video_emb: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                text_mask: torch.Tensor, gaze_emb: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.grounding.late_fusion:
            return self.grounding.ground_packed(video_emb, gaze_emb, mask, tokens, text_mask)
        return self.grounding.ground(video_emb, gaze_emb, mask, tokens, text_mask)


@dataclass(frozen=True)
class GraphDef:
    """A graph to export: module, I/O specs, which input masks which axis, and which mask
    selects the valid positions of each output (an input or an output name)."""

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    masks: dict[str, str]  # mask input -> the axis it masks
    valid: dict[str, str]  # output -> mask tensor (input or output) of its valid positions
    length_multiple: int = 1

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


def load_model(path: Path) -> tuple[GazeNLQ, dict]:
    """The stage-2 model of a training checkpoint (eval mode, frozen) and its config JSON."""
    conf = checkpoint.load_config(path)
    if conf.get("kind") != "gazenlq" or "train_config" not in conf:
        raise GazeNLQError(f"{path}: not a stage-2 (grounding) checkpoint (kind is "
                           f"{conf.get('kind')!r}); export the run's stage2/best")
    try:
        model = GazeNLQ(TrainConfig.from_dict(conf["train_config"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GazeNLQError(f"{Path(path) / 'config.json'}: malformed train_config "
                           f"({type(exc).__name__}: {exc})") from None
    try:
        model.load_state_dict(checkpoint.load_weights(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise GazeNLQError(f"{path}: weights do not fit its config ({first})") from None
    return model.eval().requires_grad_(False), conf


def graph_defs(model: GazeNLQ, text_encoder: nn.Module) -> dict[str, GraphDef]:
    """The text, video and ground graphs of ``model`` (the table everything else reads)."""
    cfg = model.cfg.grounding
    gaze = model.gaze_source is not None
    f32 = "float32"
    h = cfg.hidden * (2 if cfg.fusion == "late" else 1)  # the cached embeddings' width
    seq = ("batch", "length")
    txt = ("batch", "text_length")
    coarse = model.cfg.coarse if model.coarse is not None else None
    text_out = [TensorSpec("features", f32, (*txt, text_encoder.dim))]
    if coarse is not None:
        text_out.append(TensorSpec("query_emb", f32, ("batch", coarse.dim)))
    if model.semantic is not None:
        text_out.append(TensorSpec("noun_emb", f32, ("batch", cfg.text_dim)))
    text = GraphDef(
        "text", TextGraph(model, text_encoder).eval(),
        (TensorSpec("input_ids", "int64", txt), TensorSpec("attention_mask", "int64", txt)),
        tuple(text_out), masks={"attention_mask": "text_length"},
        valid={"features": "attention_mask"})
    video_in = [TensorSpec("video", f32, (*seq, cfg.video_dim)), TensorSpec("mask", "bool", seq)]
    video_out = [TensorSpec("video_emb", f32, (*seq, h))]
    ground_in = [TensorSpec("video_emb", f32, (*seq, h)), TensorSpec("mask", "bool", seq),
                 TensorSpec("tokens", f32, (*txt, cfg.text_dim)),
                 TensorSpec("text_mask", "bool", txt)]
    if gaze:
        video_in.append(TensorSpec("gaze_features", f32, (*seq, model.cfg.estimator.in_dim)))
        video_out.append(TensorSpec("gaze_emb", f32, (*seq, h)))
        ground_in.append(TensorSpec("gaze_emb", f32, (*seq, h)))
    valid = {o.name: "mask" for o in video_out}
    if coarse is not None:  # spans without a valid step are zero on both sides
        video_out.append(TensorSpec("coarse_emb", f32, ("batch", "spans", coarse.dim)))
    if model.semantic is not None:
        video_out.append(TensorSpec("looked_at_emb", f32, (*seq, cfg.text_dim)))
        valid["looked_at_emb"] = "mask"
    video = GraphDef("video", VideoGraph(model).eval(), tuple(video_in), tuple(video_out),
                     masks={"mask": "length"}, valid=valid,
                     length_multiple=cfg.length_multiple if cfg.fusion == "late" else 1)
    pts = ("batch", "points")
    ground = GraphDef(
        "ground", GroundGraph(model).eval(), tuple(ground_in),
        (TensorSpec("logits", f32, pts), TensorSpec("distances", f32, (*pts, 2)),
         TensorSpec("point_mask", "bool", pts)),
        masks={"mask": "length", "text_mask": "text_length"},
        valid={"logits": "point_mask", "distances": "point_mask"},
        length_multiple=cfg.length_multiple)
    return {"text": text, "video": video, "ground": ground}


def random_inputs(graph: GraphDef, sizes: dict[str, int], rng: np.random.Generator, *,
                  vocab: int) -> dict[str, np.ndarray]:
    """Random inputs for ``graph`` at ``sizes`` (axis name -> size). Row 0 is fully valid,
    the other rows are padded to random valid lengths (at least 1); padded positions of
    float and id inputs are zero, as the engine pads them."""
    batch = sizes["batch"]
    valid = {axis: np.concatenate([[n], rng.integers(1, n + 1, batch - 1)])
             for axis, n in sizes.items() if axis != "batch"}
    feeds = {}
    for spec in graph.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
        if spec.name in graph.masks:
            n = valid[graph.masks[spec.name]]
            feeds[spec.name] = (np.arange(shape[1])[None, :] < n[:, None]).astype(spec.dtype)
            continue
        if spec.dtype == "int64":
            x = rng.integers(1, vocab, shape, dtype=np.int64)
        else:
            x = rng.standard_normal(shape, dtype=np.float32)
        keep = np.arange(shape[1])[None, :] < valid[spec.shape[1]][:, None]
        feeds[spec.name] = x * keep.reshape(keep.shape + (1,) * (x.ndim - 2)).astype(x.dtype)
    return feeds


def example_inputs(graph: GraphDef, sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
    """The tracing inputs for the export, in the module's argument order."""
    feeds = random_inputs(graph, sizes, np.random.default_rng(0), vocab=1000)
    return tuple(torch.from_numpy(feeds[s.name]) for s in graph.inputs)
