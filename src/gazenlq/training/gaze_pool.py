"""Gaze-VLM's idea in the grounding model (gaze.md section 5): gaze at training time only.

``GazePool`` attends, per step, over the grid x grid cell features of the stores'
``gaze_features`` with one query and hands the attention-weighted cell features to the
grounding model as its gaze tokens (where GazeNLQ's estimator tokens go: ``gaze_embed``,
then ``GazeFusion``). In training its attention ``A`` over the cells is pulled towards
where the wearer looks - the ground-truth gaze map pooled to the same grid - by
``lambda * KL(P_gaze || A)`` averaged over the steps that have gaze (:func:`attention_kl`).
At inference it reads the cell features alone: no gaze, no estimator, no stage 1. The
variant 'gaze_reg' trains with lambda = ``GazePoolConfig.weight``; its twin 'gaze_pool'
is the same module with lambda 0, the control that says what the regulariser adds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gazenlq.training.config import GazePoolConfig


class GazePool(nn.Module):
    """Cell features ``[B, T, C * Dc]`` (C = grid^2 cells, row-major) -> gaze tokens
    ``[B, T, Dc]`` and attention logits ``[B, T, C]``.

    The query of a step is made from its mean cell (what the step shows decides where to
    look), each cell's key from the cell; a learned per-cell bias can hold a centre prior.
    """

    def __init__(self, cfg: GazePoolConfig, in_dim: int) -> None:
        super().__init__()
        cells = cfg.grid * cfg.grid
        if in_dim % cells:
            raise ValueError(f"gaze features of width {in_dim} have no {cfg.grid} x "
                             f"{cfg.grid} cell layout")
        self.cfg, self.cells, self.cell_dim = cfg, cells, in_dim // cells
        self.ln = nn.LayerNorm(self.cell_dim)
        self.query = nn.Linear(self.cell_dim, cfg.dim)
        self.key = nn.Linear(self.cell_dim, cfg.dim)
        self.bias = nn.Parameter(torch.zeros(cells))

    @property
    def token_dim(self) -> int:
        """Width of the gaze tokens handed to the grounding model."""
        return self.cell_dim

    def _cells(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.reshape(*feats.shape[:2], self.cells, self.cell_dim)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Attention logits over the cells ``[B, T, C]`` (softmax over the last axis: A)."""
        h = self.ln(self._cells(feats))
        q = self.query(h.mean(2))
        k = self.key(h)
        return (k @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(self.cfg.dim) + self.bias

    def forward(self, feats: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> gaze tokens ``[B, T, Dc]`` (zero at padded steps) and attention logits."""
        logits = self.logits(feats)
        a = torch.softmax(logits, dim=-1)
        tokens = (a.unsqueeze(-1) * self._cells(feats)).sum(2)
        return tokens * mask.unsqueeze(-1).to(tokens.dtype), logits

    def attention(self, feats: torch.Tensor) -> torch.Tensor:
        """The attention ``A`` over the cells ``[B, T, C]`` (each step's sums to 1)."""
        return torch.softmax(self.logits(feats), dim=-1)

    def gaze_tokens(self, feats: torch.Tensor, mask: torch.Tensor, variant: str | None = None
                    ) -> torch.Tensor:
        """The estimator's interface (``infer.clip_inputs``, the export's video graph): the
        tokens alone; ``variant`` is accepted for it and must be a pooling variant."""
        if variant not in (None, "gaze_reg", "gaze_pool"):
            raise ValueError(f"attention pooling has no variant {variant!r}")
        return self(feats, mask)[0]


def gaze_targets(cell_mass: torch.Tensor, eps: float) -> torch.Tensor:
    """P_gaze: the gaze maps' mass per cell ``[..., C]`` plus ``eps``, normalised to sum 1."""
    p = cell_mass + eps
    return p / p.sum(-1, keepdim=True)


def attention_kl(logits: torch.Tensor, cell_mass: torch.Tensor, has_gaze: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """Mean over the steps with gaze (``has_gaze [B, T]``) of KL(P_gaze || A), A the softmax
    of ``logits [B, T, C]``, P_gaze from the gaze maps' ``cell_mass [B, T, C]``; steps
    without gaze contribute nothing (zero, with a graph, when no step has gaze)."""
    p = gaze_targets(cell_mass, eps)
    kl = (torch.xlogy(p, p) - p * torch.log_softmax(logits, dim=-1)).sum(-1)  # 0 log 0 = 0
    kl = torch.where(has_gaze, kl, torch.zeros_like(kl))
    return kl.sum() / has_gaze.sum().clamp(min=1)
