"""The coarse stage of coarse-to-fine search: query-independent embeddings of short spans of
steps and a query embedding in the same space, trained contrastively (CONE-style window
selection, grounding.md section 8).

Span embeddings come from the grounding model's query-independent outputs (the video
embedding and, for the gaze variants, the gaze context), so the exported per-video graph
produces them beside the embeddings the engine caches; the query embedding comes from the
frozen text encoder's token features, so the text graph produces it. Both inputs are
detached: the coarse heads learn beside stage 2 without changing a bit of the grounding
model (their gradients are clipped on their own and their initial weights are drawn from a
forked RNG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gazenlq.text.layers import masked_mean
from gazenlq.training.config import CoarseConfig


def span_count(length: int, span: int) -> int:
    """Spans of ``span`` steps covering ``length`` steps (the last one may be partial);
    written with non-negative operands only, as the exported graph computes it."""
    return (length + span - 1) // span


class CoarseHeads(nn.Module):
    """``spans(video_emb, gaze_emb, mask) -> [B, S, dim]`` and ``query(tokens, mask) ->
    [Q, dim]``, both L2-normalised; a span's score for a query is their inner product."""

    def __init__(self, cfg: CoarseConfig, hidden: int, text_dim: int, gaze: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.gaze = gaze and cfg.gaze
        self.video = nn.Sequential(nn.LayerNorm(hidden * (2 if self.gaze else 1)),
                                   nn.Linear(hidden * (2 if self.gaze else 1), cfg.dim))
        self.text = nn.Sequential(nn.Linear(text_dim, cfg.dim), nn.GELU(),
                                  nn.Linear(cfg.dim, cfg.dim))

    def spans(self, video_emb: torch.Tensor, gaze_emb: torch.Tensor | None,
              mask: torch.Tensor) -> torch.Tensor:
        """Mean of each span's valid steps, projected and normalised; ``[B, S, dim]`` with
        ``S = ceil(T / span)`` (spans without a valid step give zero vectors)."""
        x = torch.cat([video_emb, gaze_emb], -1) if self.gaze else video_emb
        b, t, d = x.shape
        s = self.cfg.span
        n = span_count(t, s)
        pad = n * s - t  # no branch on it: the exported graph keeps the length dynamic
        m = F.pad(mask.to(x.dtype), (0, pad))
        x = (F.pad(x, (0, 0, 0, pad)) * m.unsqueeze(-1)).reshape(b, n, s, d).sum(2)
        count = m.reshape(b, n, s).sum(2, keepdim=True)
        pooled = x / count.clamp(min=1.0)
        out = F.normalize(self.video(pooled), dim=-1)
        return out * (count > 0).to(out.dtype)

    def query(self, tokens: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """The query's sentence embedding (mean of its token features), projected and
        normalised; ``[Q, dim]``."""
        return F.normalize(self.text(masked_mean(tokens, text_mask)), dim=-1)


def span_targets(answers: torch.Tensor, clip_of: torch.Tensor, clips: int, spans: int,
                 span: int) -> torch.Tensor:
    """``[Q, clips * spans]`` bool: the spans of each query's own clip that overlap its
    answer (every such span is a positive; an answer covering several spans has several)."""
    starts = torch.arange(spans, device=answers.device, dtype=answers.dtype) * span
    overlap = (starts + span > answers[:, :1]) & (starts < answers[:, 1:])
    own = F.one_hot(clip_of, clips).bool()
    return (own.unsqueeze(-1) & overlap.unsqueeze(1)).reshape(len(answers), clips * spans)


def coarse_loss(heads: CoarseHeads, video_emb: torch.Tensor, gaze_emb: torch.Tensor | None,
                mask: torch.Tensor, tokens: torch.Tensor, text_mask: torch.Tensor,
                answers: torch.Tensor, clip_of: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE of each query against every span of the batch: its answer's
    spans against the rest of its own window (same-video negatives) and every span of the
    other windows (in-batch negatives). Inputs are detached here."""
    spans = heads.spans(video_emb.detach(), None if gaze_emb is None else gaze_emb.detach(),
                        mask)
    b, n, _ = spans.shape
    query = heads.query(tokens.detach(), text_mask)
    logits = query @ spans.reshape(b * n, -1).T / heads.cfg.temperature
    valid = F.pad(mask, (0, n * heads.cfg.span - mask.shape[1])).reshape(b, n, -1).any(-1)
    logits = logits.masked_fill(~valid.reshape(1, b * n), float("-inf"))
    positive = span_targets(answers.to(logits.dtype), clip_of, b, n, heads.cfg.span)
    positive &= valid.reshape(1, b * n)
    keep = positive.any(-1)  # answers inside the window always have a positive span
    if not keep.any():
        return logits.new_zeros(())
    logits, positive = logits[keep], positive[keep]
    return (torch.logsumexp(logits, -1)
            - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), -1)).mean()
