"""PyTorch inference: whole clips -> ranked windows in clip seconds -> submission entries.

Decoding and Soft-NMS go through ``gazenlq.kernels``; steps -> seconds through the one time
grid. This is the reference the exported bundle and the engine are checked against.
"""

from __future__ import annotations

import numpy as np
import torch

from gazenlq.bundle import PostprocessConfig, level_sizes, pad_to
from gazenlq.errors import GazeNLQError
from gazenlq.kernels import postprocess_query
from gazenlq.nlq.submission import Entry
from gazenlq.store import GAZE_INPUT, VIDEO, FeatureStore
from gazenlq.training.data import ClipItem, TextFeatures
from gazenlq.training.device import model_device
from gazenlq.training.estimator import GazeEstimator
from gazenlq.training.gaze_pool import GazePool
from gazenlq.training.grounding import GroundingModel
from gazenlq.training.semantic import SemanticHead


@torch.no_grad()
def clip_inputs(item: ClipItem, multiple: int, estimator: GazeEstimator | GazePool | None,
                variant: str, device: torch.device = torch.device("cpu"),
                cached: np.ndarray | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A clip's padded video features ``[1, T, Dv]``, mask and gaze tokens (or None), on
    ``device``; ``estimator`` is the model's source of gaze tokens
    (``GazeNLQ.gaze_source``: the stage-1 estimator or the attention pool); ``cached`` gaze
    tokens ``[n, D]`` (``gaze_cache``) stand in for running the estimator."""
    store = FeatureStore.open(item.store)
    t = pad_to(item.length, multiple)

    def padded(steps: np.ndarray) -> torch.Tensor:
        out = torch.zeros(1, t, steps.shape[1])
        out[0, : len(steps)] = torch.from_numpy(steps.astype(np.float32, copy=False))
        return out.to(device)

    span = item.span
    video = padded(store.read(VIDEO, span.first, span.stop))
    mask = torch.zeros(1, t, dtype=torch.bool)
    mask[0, : item.length] = True
    mask = mask.to(device)
    gaze = None
    if cached is not None:
        gaze = padded(cached)
    elif estimator is not None:
        gaze = estimator.gaze_tokens(padded(store.read(GAZE_INPUT, span.first, span.stop)),
                                     mask, variant)
    return video, mask, gaze


@torch.no_grad()
def predict(model: GroundingModel, estimator: GazeEstimator | GazePool | None,
            items: list[ClipItem],
            text: TextFeatures, post: PostprocessConfig | None = None,
            chunk: int = 32, gaze_tokens=None, semantic: SemanticHead | None = None
            ) -> list[Entry]:
    """Top-k windows (clip seconds) for every query of ``items``; ``gaze_tokens`` (a
    ``gaze_cache.GazeTokens`` holding these clips) replaces running the estimator;
    ``semantic``, the looked-at track's head, for a model with ``looked_at_feed``."""
    model.eval()
    device = model_device(model)
    post = post or PostprocessConfig()
    cfg = model.cfg
    entries = []
    for item in items:
        if pad_to(item.length, cfg.length_multiple) > cfg.max_len:
            raise GazeNLQError(f"clip {item.clip_uid}: {item.length} steps exceed the model's "
                               f"max_len {cfg.max_len}; search it in windows with gaze-search")
        uses_gaze = cfg.gaze != "none"
        cached = gaze_tokens.read(item.clip_uid) if uses_gaze and gaze_tokens else None
        video, mask, gaze = clip_inputs(item, cfg.length_multiple,
                                        estimator if uses_gaze else None, cfg.gaze, device,
                                        cached)
        v, g = model.embed_video(video, mask, gaze)
        looked = None if model.looked_embed is None else semantic(v, gaze, mask)
        sizes = level_sizes(video.shape[1], cfg.levels)
        for c in range(0, len(item.queries), chunk):
            queries = item.queries[c:c + chunk]
            tokens, tmask = text.batch([text.index[q.text] for q in queries])
            q = len(queries)
            logits, dists, pmask = model.ground_clips(
                v, g, mask, torch.zeros(q, dtype=torch.long, device=device),
                tokens.to(device), tmask.to(device),
                looked=None if looked is None else looked.expand(q, -1, -1))
            logits = logits.masked_fill(~pmask, float("-inf")).float().cpu()
            for query, lg, d in zip(queries, logits.numpy(), dists.float().cpu().numpy()):
                kept = postprocess_query(lg, d, sizes, cfg.strides, config=post)
                secs = item.span.to_seconds(kept.segments)
                entries.append(Entry(query.clip_uid, query.annotation_uid, query.query_idx,
                                     tuple((float(a), float(b)) for a, b in secs)))
    return entries
