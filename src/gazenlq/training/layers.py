"""Building blocks of both models, written to export to ONNX with dynamic batch and length.

Conventions: sequences are ``[B, T, C]``; masks are bool ``[B, T]`` (True = valid); masked
scores use a finite negative (``NEG``) so fp16 never overflows; fully masked rows give 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e4


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """Absolute sinusoidal position encoding ``[length, dim]``, computed in float64 once
    (a table, so every backend adds exactly the same values)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float64)
    freq = torch.exp(-math.log(10000.0) * i / dim)
    enc = torch.zeros(length, dim, dtype=torch.float64)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return enc.float()


class DropPath(nn.Module):
    """Stochastic depth on residual branches (per sample)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


class MaskedConv(nn.Module):
    """Conv1d over ``[B, T, C]`` that zeroes padded steps before and after; optional stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2,
                              groups=groups, bias=bias)
        self.stride = stride

    def forward(self, x: torch.Tensor, mask: torch.Tensor, masked: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``masked``: the caller's padded steps are already zero (skips one product)."""
        if not masked:
            x = x * mask.unsqueeze(-1).to(x.dtype)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        if self.stride > 1:
            mask = mask[:, :: self.stride]
        return y * mask.unsqueeze(-1).to(y.dtype), mask


def _softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with invalid keys excluded; all-invalid rows give zeros."""
    scores = torch.where(valid, scores, torch.full_like(scores, NEG))
    attn = torch.softmax(scores, dim=-1)
    return attn * valid.any(dim=-1, keepdim=True).to(attn.dtype)


BLOCK = 16


def _band(window: int, device: torch.device) -> torch.Tensor:
    """``[BLOCK, BLOCK + window - 1]``: query ``i`` of a block sees keys ``i .. i + window - 1``
    of the block's padded key span."""
    i = torch.arange(BLOCK, device=device)[:, None]
    k = torch.arange(BLOCK + window - 1, device=device)[None, :]
    return (k >= i) & (k < i + window)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor,
                    window: int) -> torch.Tensor:
    """Attention of each position to the ``window`` keys centred on it.

    ``q, k, v``: ``[B, H, T, D]``; ``key_mask``: ``[B, T]``. Blocked: each block of
    ``BLOCK`` queries attends, by one matrix product, to its keys plus ``window // 2`` on
    either side, under a band mask: O(T * (BLOCK + window)) and export-friendly (static
    slices, dynamic T).
    """
    r = window // 2
    b, h, t, d = q.shape
    pad = (BLOCK - t % BLOCK) % BLOCK
    n = (t + pad) // BLOCK
    qb = F.pad(q, (0, 0, 0, pad)).reshape(b, h, n, BLOCK, d)

    def spans(x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, D]`` -> ``[B, H, n, BLOCK + 2r, D]``: each block with r neighbours."""
        xb = F.pad(x, (0, 0, BLOCK, BLOCK + pad))
        xb = xb.reshape(x.shape[0], x.shape[1], n + 2, BLOCK, x.shape[-1])
        return torch.cat([xb[:, :, :-2, BLOCK - r:], xb[:, :, 1:-1], xb[:, :, 2:, :r]], dim=3)

    ks, vs = spans(k), spans(v)
    ms = spans(key_mask[:, None, :, None].to(q.dtype))[..., 0] > 0  # [B, 1, n, BLOCK + 2r]
    valid = _band(window, q.device)[None, None, None] & ms.unsqueeze(3)
    scores = qb @ ks.transpose(-1, -2) / math.sqrt(d)  # [B, H, n, BLOCK, BLOCK + 2r]
    out = _softmax(scores, valid) @ vs
    return out.reshape(b, h, n * BLOCK, d)[:, :, :t]


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_mask: torch.Tensor) -> torch.Tensor:
    """Full attention over all valid keys; ``key_mask`` ``[B, S]``."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    attn = _softmax(scores, key_mask[:, None, None, :])
    return attn @ v


class Attention(nn.Module):
    """Multi-head attention: local (``window``) or global, self or cross.

    ``null_key`` prepends a zero key and value (PyTorch's ``add_zero_attn``): a query that
    matches none of the keys can attend to nothing, so the output's size says how well it
    matched - the signal a video step needs from the query's words.
    """

    def __init__(self, dim: int, heads: int, window: int | None = None,
                 kv_dim: int | None = None, dropout: float = 0.0, null_key: bool = False
                 ) -> None:
        super().__init__()
        if null_key and window is not None:
            raise ValueError("null_key is for global (cross-)attention")
        self.heads, self.window, self.null_key = heads, window, null_key
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim or dim, dim)
        self.v = nn.Linear(kv_dim or dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(kv)), self._split(self.v(kv))
        if self.null_key:
            k = F.pad(k, (0, 0, 1, 0))
            v = F.pad(v, (0, 0, 1, 0))
            kv_mask = torch.cat([torch.ones_like(kv_mask[:, :1]), kv_mask], 1)
        if self.window is None:
            y = global_attention(q, k, v, kv_mask)
        else:
            y = local_attention(q, k, v, kv_mask, self.window)
        b, h, t, d = y.shape
        return self.drop(self.out(y.transpose(1, 2).reshape(b, t, h * d)))


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim * ratio, dim), nn.Dropout(dropout))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class TextBlock(nn.Module):
    """Pre-LN transformer block with global self-attention over text tokens."""

    def __init__(self, dim: int, heads: int, ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, None, dropout=dropout)
        self.mlp = MLP(dim, ratio, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, mask)
        x = x + self.mlp(self.ln2(x))
        return x * mask.unsqueeze(-1).to(x.dtype)


class VideoBlock(nn.Module):
    """GroundNLQ block: local self-attention -> cross-attention to text -> MLP.

    With ``stride`` 2 it halves the sequence: depthwise strided convolutions make q, k and v,
    the skip path is a max-pool, and the mask is subsampled (nearest neighbour).
    """

    def __init__(self, dim: int, heads: int, window: int, ratio: int, stride: int,
                 drop_path: float, dropout: float, layer_scale: float = 1e-4,
                 cross: bool = True) -> None:
        """``cross`` False: no cross-attention to text (a late-fusion model's blocks, which
        never see the query)."""
        super().__init__()
        self.stride = stride
        self.ln_self = nn.LayerNorm(dim)
        self.ln_cross = nn.LayerNorm(dim) if cross else None
        self.ln_mlp = nn.LayerNorm(dim)
        if stride > 1:
            self.down_q = MaskedConv(dim, dim, 3, stride, groups=dim, bias=False)
            self.down_kv = MaskedConv(dim, dim, 3, stride, groups=dim, bias=False)
            self.pool = nn.MaxPool1d(3, stride, padding=1)
        self.self_attn = Attention(dim, heads, window, dropout=dropout)
        self.cross_attn = Attention(dim, heads, None, dropout=dropout, null_key=True) \
            if cross else None
        self.mlp = MLP(dim, ratio, dropout)
        self.ls = nn.ModuleList(LayerScale(dim, layer_scale) for _ in range(3 if cross else 2))
        self.drop = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.ln_self(x)
        if self.stride > 1:
            h = h * mask.unsqueeze(-1).to(h.dtype)
            q, new_mask = self.down_q(h, mask, masked=True)
            kv, _ = self.down_kv(h, mask, masked=True)
            skip = self.pool(x.transpose(1, 2)).transpose(1, 2)
            mask = new_mask
        else:
            q = kv = h
            skip = x
        fmask = mask.unsqueeze(-1).to(x.dtype)
        x = skip * fmask + self.drop(self.ls[0](self.self_attn(q, kv, mask))) * fmask
        if self.cross_attn is not None:
            x = x + self.drop(self.ls[1](self.cross_attn(self.ln_cross(x), text, text_mask)))
        x = x + self.drop(self.ls[-1](self.mlp(self.ln_mlp(x))))
        return x * fmask, mask


class ConvLN(nn.Module):
    """Masked conv (kernel 3) -> LayerNorm -> ReLU, the unit of embeddings and heads."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = MaskedConv(c_in, c_out, kernel)
        self.ln = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, masked: bool = False
                ) -> torch.Tensor:
        y, _ = self.conv(x, mask, masked)
        return torch.relu(self.ln(y)) * mask.unsqueeze(-1).to(y.dtype)
