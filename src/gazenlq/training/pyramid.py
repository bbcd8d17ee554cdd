"""Layouts of the multi-scale pyramid: its levels laid end to end for the heads, and packed
into one tensor per step for the cache of a late-fusion model.

Level ``l`` of a ``T``-step input has ``T / 2**l`` points (``T`` a multiple of the coarsest
stride). Packed, a pyramid of width ``D`` is ``[B, T, 2D]``: channels ``[0, D)`` of step
``t`` hold level 0's point ``t``; channels ``[D, 2D)`` of step ``j * 2**l + 2**(l-1) - 1``
hold level ``l``'s point ``j`` (``l >= 1``; steps ``t`` with ``t + 1`` a multiple of
``2**(levels-1)`` hold nothing). Every step holds at most one point per half, and the
steps ``[a, b)`` with ``a`` and ``b`` multiples of the coarsest stride hold exactly the
points ``[a / 2**l, b / 2**l)`` of every level: a region of the cached steps is its own
piece of the pyramid, sliced like any per-step embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def end_to_end(feats: list[torch.Tensor], masks: list[torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The levels ``[B, n_l, C]`` laid end to end with one masked zero point after each, so
    that kernel-3 convolutions over the result never mix levels (exactly the per-level
    result) -> ``[B, sum(n_l + 1), C]`` and its mask."""
    gap = feats[0].new_zeros(feats[0].shape[0], 1, feats[0].shape[2])
    gap_mask = masks[0][:, :1] & False
    x = torch.cat([t for f in feats for t in (f, gap)], 1)
    m = torch.cat([t for mk in masks for t in (mk, gap_mask)], 1)
    return x, m


def split_levels(y: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The inverse of :func:`end_to_end` for its output ``y``: the levels' parts, gaps
    dropped."""
    out, start = [], 0
    for n in sizes:
        out.append(y[:, start:start + n])
        start = start + n + 1
    return out


def pack(levels: list[torch.Tensor]) -> torch.Tensor:
    """Levels ``[B, T / 2**l, D]`` (finest first) -> the packed ``[B, T, 2D]``."""
    b, t, d = levels[0].shape
    upper = levels[0].new_zeros(b, t, d)
    for lv, f in enumerate(levels[1:], start=1):
        stride, at = 2**lv, 2 ** (lv - 1) - 1
        spread = F.pad(f.unsqueeze(2), (0, 0, at, stride - at - 1))  # [B, n, stride, D]
        upper = upper + spread.reshape(b, t, d)
    return torch.cat([levels[0], upper], -1)


def unpack(packed: torch.Tensor, mask: torch.Tensor, levels: int
           ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The packed ``[B, T, 2D]`` and its step mask -> each level's points and mask (the
    pyramid's own: level ``l`` keeps every ``2**l``-th step's mask)."""
    d = packed.shape[-1] // 2
    feats, masks = [packed[..., :d]], [mask]
    for lv in range(1, levels):
        stride = 2**lv
        feats.append(packed[:, stride // 2 - 1::stride, d:])
        masks.append(mask[:, ::stride])
    return feats, masks
