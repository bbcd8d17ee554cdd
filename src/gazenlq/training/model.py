"""The trainable GazeNLQ system: grounding model + (frozen or fine-tuned) gaze estimator."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from gazenlq.training.coarse import CoarseHeads
from gazenlq.training.config import TrainConfig
from gazenlq.training.estimator import GazeEstimator
from gazenlq.training.grounding import GroundingModel


class GazeNLQ(nn.Module):
    """``grounding`` plus, for the gaze variants, the stage-1 ``estimator`` producing gaze
    tokens, and the ``coarse`` heads of coarse-to-fine search when configured. One state
    dict (``grounding.*``, ``estimator.*``, ``coarse.*``) is one checkpoint."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        uses_gaze = cfg.grounding.gaze != "none"
        self.estimator = GazeEstimator(cfg.estimator) if uses_gaze else None
        self.grounding = GroundingModel(
            cfg.grounding, self.estimator.token_dim if self.estimator else None)
        if self.estimator is not None and cfg.freeze_estimator:
            self.estimator.requires_grad_(False)
        self.coarse = None
        if cfg.coarse.enabled:
            # drawn from a forked RNG: the grounding model's initial weights, dropout and
            # everything after stay exactly what they are without the coarse heads
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.stage2.seed + 0xC0A)
                self.coarse = CoarseHeads(cfg.coarse, cfg.grounding.hidden,
                                          cfg.grounding.text_dim, uses_gaze)

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameters whose gradients are clipped together: the coarse heads on their own,
        so that they never change the grounding model's updates."""
        coarse = list(self.coarse.parameters()) if self.coarse is not None else []
        ids = {id(p) for p in coarse}
        return [g for g in ([p for p in self.parameters() if id(p) not in ids], coarse) if g]

    def train(self, mode: bool = True) -> GazeNLQ:
        super().train(mode)
        if self.estimator is not None and self.cfg.freeze_estimator:
            self.estimator.eval()
        return self

    def gaze_tokens(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.training and not self.cfg.freeze_estimator):
            return self.estimator.gaze_tokens(feats, mask, self.cfg.grounding.gaze)


def with_dims(cfg: TrainConfig, *, video_dim: int, gaze_dim: int, text_dim: int,
              variant: str) -> TrainConfig:
    """``cfg`` with the data's feature widths and the chosen gaze variant filled in."""
    grid = cfg.estimator.grid
    if grid and gaze_dim % (grid * grid):
        grid = None  # features without the spatial layout: embedding-only gaze tokens
    return replace(cfg, estimator=replace(cfg.estimator, in_dim=gaze_dim, grid=grid),
                   grounding=replace(cfg.grounding, video_dim=video_dim, text_dim=text_dim,
                                     gaze=variant))
