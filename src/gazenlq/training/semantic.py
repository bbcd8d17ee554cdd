"""The semantic gaze-target head: what the wearer looked at, per step (Tafasca et al.,
gaze.md section 6, with the wearer as the person).

Per step, a label embedding in the frozen text encoder's space of nouns (the unit mean of
a name's token features, :func:`noun_embedding`), so "the bulb" - any noun, not only the
training vocabulary - can be compared with every step by cosine similarity. Trained by
InfoNCE against the noun embeddings of the object names in the batch, on labelled
(fixation) steps only (``gaze.looked_at.step_labels``), with a learned temperature.

Its inputs are the per-video graph's query-independent tensors - the video embedding and,
for the gaze variants, the gaze tokens (the estimator's gaze embedding and the cell
features under the predicted gaze) - detached: like the coarse heads, it learns beside
stage 2 without changing a bit of the grounding model (own gradient-clipping group, initial
weights from a forked RNG), and the exported per-video graph outputs its embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gazenlq.text.layers import masked_mean
from gazenlq.training.config import SemanticConfig

MAX_SCALE = 100.0


def noun_embedding(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A name's embedding in the text encoder's space: the unit-length mean of its token
    features ``[Q, L, D]`` (``mask`` ``[Q, L]``) -> ``[Q, D]``. The same rule for the
    training targets and, in the exported text graph, for the queried nouns."""
    return F.normalize(masked_mean(features, mask), dim=-1)


class SemanticHead(nn.Module):
    """``(video_emb, gaze_tokens, mask) -> [B, T, text_dim]`` unit label embeddings (zero at
    padded steps); ``scale`` is the learned inverse temperature of the InfoNCE logits."""

    def __init__(self, cfg: SemanticConfig, in_dim: int, text_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, text_dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def forward(self, video_emb: torch.Tensor, gaze_tokens: torch.Tensor | None,
                mask: torch.Tensor) -> torch.Tensor:
        x = video_emb if gaze_tokens is None else torch.cat([video_emb, gaze_tokens], -1)
        out = F.normalize(self.net(x), dim=-1)
        return out * mask.unsqueeze(-1).to(out.dtype)


def batch_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Labelled steps of ``labels [B, T]`` (object ids, -1 none) -> their positions (bool
    ``[B, T]``), the batch's object ids (sorted, unique: the InfoNCE classes) and each
    labelled step's class index among them."""
    keep = labels >= 0
    classes, target = torch.unique(labels[keep], sorted=True, return_inverse=True)
    return keep, classes, target


def semantic_loss(head: SemanticHead, video_emb: torch.Tensor,
                  gaze_tokens: torch.Tensor | None, mask: torch.Tensor, labels: torch.Tensor,
                  nouns: torch.Tensor) -> torch.Tensor:
    """InfoNCE of every labelled step's embedding against the noun embeddings (``nouns``
    ``[V, D]``, the vocabulary's) of the objects labelled in the batch; inputs detached."""
    keep, classes, target = batch_targets(torch.where(mask, labels, -1))
    if not keep.any():
        return video_emb.new_zeros(())
    emb = head(video_emb.detach(), None if gaze_tokens is None else gaze_tokens.detach(),
               mask)[keep]
    logits = head.scale * emb @ nouns[classes].to(emb.dtype).T
    return F.cross_entropy(logits, target)
