"""Label assignment and losses of the grounding model (grounding.md section 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gazenlq.training.config import GroundingConfig


def point_grid(length: int, cfg: GroundingConfig, device: torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions (steps), strides and regression-range bounds of every point, finest first,
    for a padded input of ``length`` steps. Ranges are in steps of the input grid; the
    coarsest level takes everything above its lower bound."""
    pts, strides, lo, hi = [], [], [], []
    for level, s in enumerate(cfg.strides):
        n = length // s
        pts.append(torch.arange(n, device=device, dtype=torch.float32) * s)
        strides.append(torch.full((n,), float(s), device=device))
        lo.append(torch.full((n,), float(cfg.regression_ranges[level][0]), device=device))
        top = cfg.regression_ranges[level][1] if level < cfg.levels - 1 else float("inf")
        hi.append(torch.full((n,), float(top), device=device))
    return torch.cat(pts), torch.cat(strides), torch.cat(lo), torch.cat(hi)


def assign(gt: torch.Tensor, point_mask: torch.Tensor, cfg: GroundingConfig
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for one ground-truth segment per query.

    ``gt [Q, 2]`` in steps; ``point_mask [Q, M]``. A point is positive when it lies strictly
    inside the centre region (radius ``centre_radius * stride`` around the segment's
    centre, clipped to the segment) and its largest distance to the ends falls in its
    level's regression range. A query left without any positive (windows shorter than one
    step) gets the finest-level point nearest its centre, so no query trains on negatives
    only. Returns ``labels [Q, M]`` (0/1) and ``reg [Q, M, 2]`` in units of the stride.
    """
    length = point_mask.shape[1] * 2 ** (cfg.levels - 1) // (2**cfg.levels - 1)
    pts, strides, lo, hi = point_grid(length, cfg, gt.device)
    gs, ge = gt[:, :1], gt[:, 1:]
    left, right = pts - gs, ge - pts
    centre = (gs + ge) / 2
    radius = cfg.centre_radius * strides
    inside = ((pts - torch.maximum(centre - radius, gs)) > 0) & \
        ((torch.minimum(centre + radius, ge) - pts) > 0)
    reach = torch.maximum(left, right)
    pos = inside & (reach >= lo) & (reach <= hi) & point_mask
    n0 = length  # finest level comes first
    nearest = torch.clamp(torch.round(centre[:, 0]), 0, n0 - 1).long()
    lonely = ~pos.any(dim=1)
    pos[lonely, nearest[lonely]] = point_mask[lonely, nearest[lonely]]
    reg = torch.stack([left, right], dim=-1).clamp(min=0) / strides[None, :, None]
    return pos.float(), reg


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
               cfg: GroundingConfig) -> torch.Tensor:
    """Sigmoid focal loss (alpha, gamma) with label smoothing, summed over valid points."""
    target = labels * (1 - cfg.label_smoothing) + cfg.label_smoothing / 2
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha = cfg.focal_alpha * target + (1 - cfg.focal_alpha) * (1 - target)
    loss = alpha * ce * (1 - p_t) ** cfg.focal_gamma
    return (loss * mask).sum()


def diou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-D DIoU loss between (left, right) distances from the same point, summed."""
    pl, pr = pred[:, 0], pred[:, 1]
    tl, tr = target[:, 0], target[:, 1]
    inter = torch.minimum(pl, tl) + torch.minimum(pr, tr)
    union = torch.maximum(pl, tl) + torch.maximum(pr, tr)  # = enclosing span in 1-D
    iou = inter / union.clamp(min=1e-6)
    centre_gap = ((pr - pl) - (tr - tl)) / 2
    return (1 - iou + (centre_gap / union.clamp(min=1e-6)) ** 2).sum()


class PositiveNormaliser:
    """Moving average of the number of positives (momentum 0.9) that divides both losses."""

    def __init__(self, init: float = 100.0, momentum: float = 0.9) -> None:
        self.value, self.momentum = init, momentum

    def update(self, positives: float) -> float:
        self.value = self.momentum * self.value + (1 - self.momentum) * max(positives, 1.0)
        return self.value


def saliency_loss(scores: torch.Tensor, mask: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE over the steps of each query's window: the steps inside its
    answer against all valid steps (Moment-DETR / UniVTG-style saliency supervision).

    ``scores [Q, T]``, ``mask [Q, T]``, ``gt [Q, 2]`` in steps. A step is inside when its
    centre (``t + 0.5``) lies in the answer; an answer shorter than a step gets the step
    that holds its centre. Dense supervision of which steps match the query: the focal
    loss sees only a few centre points per query. Returns the mean over queries."""
    t = torch.arange(scores.shape[1], device=scores.device, dtype=scores.dtype) + 0.5
    inside = (t >= gt[:, :1]) & (t <= gt[:, 1:]) & mask
    centre = torch.clamp(gt.mean(1).floor().long(), 0, scores.shape[1] - 1)
    rows = torch.arange(len(gt), device=scores.device)
    inside[rows, centre] |= mask[rows, centre]
    neg_inf = torch.finfo(scores.dtype).min
    all_ = torch.logsumexp(scores.masked_fill(~mask, neg_inf), dim=1)
    pos = torch.logsumexp(scores.masked_fill(~inside, neg_inf), dim=1)
    return (all_ - pos).mean()


def grounding_loss(logits: torch.Tensor, dists: torch.Tensor, point_mask: torch.Tensor,
                   gt: torch.Tensor, cfg: GroundingConfig, norm: PositiveNormaliser,
                   match: torch.Tensor | None = None, step_mask: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """Focal + DIoU losses (normalised by the moving positive count), plus
    ``cfg.saliency_weight`` times the saliency loss of ``match`` when given."""
    labels, reg = assign(gt, point_mask, cfg)
    pos = labels > 0
    n = norm.update(float(pos.sum()))
    cls = focal_loss(logits, labels, point_mask.float(), cfg) / n
    box = diou_loss(dists[pos], reg[pos]) / n
    out = {"loss": cls + box, "cls": cls.detach(), "reg": box.detach()}
    if match is not None and cfg.saliency_weight > 0:
        sal = saliency_loss(match, step_mask, gt)
        out["loss"] = out["loss"] + cfg.saliency_weight * sal
        out["saliency"] = sal.detach()
    return out
