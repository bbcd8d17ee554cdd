"""Stage 1: GazeNLQ's gaze estimator (gaze.md section 1) and the gaze tokens it feeds stage 2.

Video branch: features -> 5 GLU layers -> self-attention -> projection -> embedding ``v``;
a regression head predicts the 64 x 64 gaze map from ``v``. Gaze branch (training only):
ground-truth maps -> 3-D convolutions -> projection -> embedding ``g``. Loss: InfoNCE
between ``v`` and ``g`` over the steps of a batch + KL(G_gt || G_pred).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gazenlq.training.config import GazeEstimatorConfig
from gazenlq.training.layers import Attention


def cell_shares(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """``[..., S * S]`` gaze maps (row-major S x S) -> ``[..., grid * grid]``: the mass of
    each map in each cell of a ``grid`` x ``grid`` layout of the image."""
    s = math.isqrt(maps.shape[-1])
    lead = maps.shape[:-1]
    cells = maps.reshape(*lead, grid, s // grid, grid, s // grid).sum(dim=(-3, -1))
    return cells.reshape(*lead, grid * grid)


class GLU(nn.Module):
    """Pre-LN gated linear unit with a residual connection."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.lin = nn.Linear(dim, 2 * dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(F.glu(self.lin(self.ln(x)), dim=-1))


class GazeMapEncoder(nn.Module):
    """3-D convolutions over (time, y, x) of gaze maps -> one embedding per step."""

    def __init__(self, embed_dim: int, map_size: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv3d(1, 8, (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2)), nn.ReLU(),
            nn.Conv3d(8, 16, (3, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)), nn.ReLU(),
            nn.Conv3d(16, 16, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.ReLU(),
        )
        side = map_size // 8
        self.proj = nn.Sequential(nn.Linear(16 * side * side, embed_dim), nn.ReLU(),
                                  nn.Linear(embed_dim, embed_dim))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, t, h, w = maps.shape
        x = self.net((maps * (h * w)).unsqueeze(1))  # scale: a uniform map becomes all ones
        return self.proj(x.permute(0, 2, 1, 3, 4).reshape(b, t, -1))


class GazeEstimator(nn.Module):
    """Predicts per-step gaze embeddings and gaze maps from gaze-estimator features."""

    def __init__(self, cfg: GazeEstimatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.inp = nn.Sequential(nn.LayerNorm(cfg.in_dim), nn.Linear(cfg.in_dim, h))
        self.glus = nn.ModuleList(GLU(h, cfg.dropout) for _ in range(cfg.glu_layers))
        self.ln_attn = nn.LayerNorm(h)
        self.attn = Attention(h, cfg.heads, None, dropout=cfg.dropout)
        self.proj = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, h), nn.ReLU(),
                                  nn.Linear(h, cfg.embed_dim))
        self.map_head = nn.Linear(cfg.embed_dim, cfg.map_size * cfg.map_size)
        self.map_encoder = GazeMapEncoder(cfg.embed_dim, cfg.map_size)

    @property
    def token_dim(self) -> int:
        """Width of the gaze tokens handed to the grounding model."""
        cells = self.cfg.in_dim // self.cfg.grid**2 if self.cfg.grid else 0
        return self.cfg.embed_dim + cells

    def forward(self, feats: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats [B, T, Dg]`` -> embedding ``[B, T, E]`` and map logits ``[B, T, S*S]``."""
        x = self.inp(feats)
        for glu in self.glus:
            x = glu(x)
        h = self.ln_attn(x)
        x = x + self.attn(h, h, mask)
        v = self.proj(x)
        return v, self.map_head(v)

    def loss(self, feats: torch.Tensor, maps: torch.Tensor, valid: torch.Tensor
             ) -> dict[str, torch.Tensor]:
        """InfoNCE(v, g) over valid steps + KL(G_gt || G_pred)."""
        v, logits = self(feats, torch.ones_like(valid))
        g = self.map_encoder(maps)
        v, g = F.normalize(v[valid], dim=-1), F.normalize(g[valid], dim=-1)
        sim = v @ g.T / self.cfg.temperature
        nce = F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))
        target = maps[valid].flatten(1)
        target = target / target.sum(-1, keepdim=True)
        kl = (target * (torch.log(target.clamp(min=1e-12))
                        - F.log_softmax(logits[valid], dim=-1))).sum(-1).mean()
        return {"loss": nce + kl, "nce": nce.detach(), "kl": kl.detach()}

    def predict_maps(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted gaze maps ``[B, T, S, S]`` (each sums to 1)."""
        s = self.cfg.map_size
        _, logits = self(feats, mask)
        return torch.softmax(logits, dim=-1).view(*logits.shape[:2], s, s)

    def gaze_tokens(self, feats: torch.Tensor, mask: torch.Tensor, variant: str = "gaze"
                    ) -> torch.Tensor:
        """Stage-2 input: the gaze embedding, plus (for grid features) the features of the
        cells the predicted gaze falls on - this project's answer to GazeNLQ's limitation
        (2). The other variants replace the predicted map ``p`` and embed theirs with the
        gaze branch: 'neg_gaze' (GazeNLQ*) the complement of ``p``, the area outside the
        gaze; 'uniform_gaze' a uniform map, which keeps the cell features (averaged) and
        drops where the wearer looks - the control that isolates the gaze's contribution."""
        if variant not in ("gaze", "neg_gaze", "uniform_gaze"):
            raise ValueError(f"gaze tokens of unknown variant {variant!r}")
        s = self.cfg.map_size
        if variant == "uniform_gaze":  # needs no prediction: skip the estimator's network
            p = torch.full_like(feats[..., :1], 1 / (s * s)).expand(-1, -1, s * s)
        else:
            v, logits = self(feats, mask)
            p = torch.softmax(logits, dim=-1)
            if variant == "neg_gaze":
                p = (1 - p) / (1 - p).sum(-1, keepdim=True)
        if variant != "gaze":
            v = self.map_encoder(p.reshape(*p.shape[:2], s, s))
        parts = [v]
        if self.cfg.grid:
            g = self.cfg.grid
            w = cell_shares(p, g)
            cells = feats.view(*p.shape[:2], g * g, -1)
            parts.append((w.unsqueeze(-1) * cells).sum(2))
        return torch.cat(parts, -1) * mask.unsqueeze(-1).to(v.dtype)
