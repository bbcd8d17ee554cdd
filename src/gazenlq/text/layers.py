"""Transformer pieces shared by the text encoders, written for ``torch.onnx`` export.

No ``.item()`` and no Python branches on tensor sizes; masked attention scores are replaced
with ``torch.where`` by a finite negative (``NEG``), which stays finite in fp16 and gives
masked keys a weight of exactly 0 in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gazenlq.errors import GazeNLQError

NEG = -1e4


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over axis 1 of ``x [B, L, D]`` at the valid (``mask [B, L]``) positions -> ``[B, D]``;
    rows without any valid position give 0."""
    m = (mask > 0).unsqueeze(-1).to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU, as BERT and HF's "gelu"
    "quick_gelu": quick_gelu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function a HuggingFace config names in ``hidden_act``."""
    if name not in ACTIVATIONS:
        raise GazeNLQError(f"hidden_act {name!r} is not supported (expected one of "
                           f"{', '.join(sorted(ACTIVATIONS))})")
    return ACTIVATIONS[name]


class SelfAttention(nn.Module):
    """Multi-head self-attention; ``keep`` (bool, broadcastable to ``[B, H, L, L]``) marks
    the key positions each query may attend to."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise GazeNLQError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, H, L, Dh]

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        weights = torch.where(keep, scores, NEG).softmax(dim=-1)
        return self.out(torch.matmul(weights, v).transpose(1, 2).flatten(2))


class MLP(nn.Module):
    """Position-wise feed-forward block ``fc2(act(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
