"""The trainable GazeNLQ system: grounding model + (frozen or fine-tuned) gaze estimator."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from gazenlq.errors import GazeNLQError
from gazenlq.training.coarse import CoarseHeads
from gazenlq.training.config import ESTIMATOR_VARIANTS, POOL_VARIANTS, TrainConfig
from gazenlq.training.estimator import GazeEstimator
from gazenlq.training.gaze_pool import GazePool
from gazenlq.training.grounding import GroundingModel
from gazenlq.training.semantic import SemanticHead


class GazeNLQ(nn.Module):
    """``grounding`` plus the source of its gaze tokens - the stage-1 ``estimator``
    (``ESTIMATOR_VARIANTS``) or the attention ``pool`` trained with it (``POOL_VARIANTS``)
    - and, when configured, the ``coarse`` heads of coarse-to-fine search and the
    ``semantic`` head of what the wearer looked at. One state dict (``grounding.*``,
    ``estimator.*`` or ``pool.*``, ``coarse.*``, ``semantic.*``) is one checkpoint."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        self.cfg = cfg
        variant = cfg.grounding.gaze
        uses_gaze = variant != "none"
        self.estimator = GazeEstimator(cfg.estimator) if variant in ESTIMATOR_VARIANTS else None
        # the pool reads the gaze features, whose width the estimator's config records
        self.pool = GazePool(cfg.pool, cfg.estimator.in_dim) if variant in POOL_VARIANTS \
            else None
        source = self.gaze_source
        self.grounding = GroundingModel(cfg.grounding, source.token_dim if source else None)
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
        if cfg.grounding.looked_at_feed and not cfg.semantic.enabled:
            raise GazeNLQError("looked_at_feed reads the semantic head: train with "
                               "--looked-at")
        self.semantic = None
        if cfg.semantic.enabled:  # likewise from its own forked RNG
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.stage2.seed + 0x5E3)
                self.semantic = SemanticHead(
                    cfg.semantic, cfg.grounding.hidden + (source.token_dim if source else 0),
                    cfg.grounding.text_dim)

    def looked_track(self, video_emb: torch.Tensor, gaze_tokens: torch.Tensor | None,
                     mask: torch.Tensor) -> torch.Tensor | None:
        """The semantic head's looked-at embeddings as the grounding model's input, for a
        model with ``looked_at_feed`` (else None): detached, so the head learns only from
        the looked-at labels and the grounding model learns to read it."""
        if self.grounding.looked_embed is None:
            return None
        return self.semantic(video_emb.detach(),
                             None if gaze_tokens is None else gaze_tokens.detach(),
                             mask).detach()

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Parameters whose gradients are clipped together: the coarse and semantic heads
        each on their own, so that they never change the grounding model's updates."""
        heads = [list(h.parameters()) for h in (self.coarse, self.semantic) if h is not None]
        ids = {id(p) for h in heads for p in h}
        return [g for g in ([p for p in self.parameters() if id(p) not in ids], *heads) if g]

    def train(self, mode: bool = True) -> GazeNLQ:
        super().train(mode)
        if self.estimator is not None and self.cfg.freeze_estimator:
            self.estimator.eval()
        return self

    @property
    def gaze_source(self) -> GazeEstimator | GazePool | None:
        """What turns the stores' gaze features into gaze tokens (None: no gaze)."""
        return self.estimator if self.estimator is not None else self.pool

    def gaze_tokens(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            return self.pool.gaze_tokens(feats, mask)
        with torch.set_grad_enabled(self.training and not self.cfg.freeze_estimator):
            return self.estimator.gaze_tokens(feats, mask, self.cfg.grounding.gaze)


def with_dims(cfg: TrainConfig, *, video_dim: int, gaze_dim: int, text_dim: int,
              variant: str) -> TrainConfig:
    """``cfg`` with the data's feature widths and the chosen gaze variant filled in."""
    grid = cfg.estimator.grid
    if grid and gaze_dim % (grid * grid):
        grid = None  # features without the spatial layout: embedding-only gaze tokens
    cells = cfg.pool.grid ** 2
    if variant in POOL_VARIANTS and gaze_dim % cells:
        raise GazeNLQError(f"variant {variant!r} pools {cfg.pool.grid} x {cfg.pool.grid} "
                           f"cell features, but the stores' gaze_features have width "
                           f"{gaze_dim}, not a multiple of {cells}")
    return replace(cfg, estimator=replace(cfg.estimator, in_dim=gaze_dim, grid=grid),
                   grounding=replace(cfg.grounding, video_dim=video_dim, text_dim=text_dim,
                                     gaze=variant))
