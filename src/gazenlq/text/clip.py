"""Optional CLIP text encoder (GroundNLQ's choice) loaded from a local HuggingFace directory.

Accepts a full ``CLIPModel`` checkpoint (``config.json`` with ``text_config``; only the text
tower is read) or a ``CLIPTextModel`` one. Queries are lower-cased by the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gazenlq.errors import GazeNLQError
from gazenlq.text.checkpoint import config_from_dict, load_weights, read_checkpoint
from gazenlq.text.layers import MLP, SelfAttention

# HuggingFace CLIPTextModel names (after the "text_model." prefix, if any) -> ours.
RULES = (
    (r"embeddings\.token_embedding\.", "token_embedding."),
    (r"embeddings\.position_embedding\.", "position_embedding."),
    (r"encoder\.layers\.(\d+)\.self_attn\.q_proj\.", r"layers.\1.attn.q."),
    (r"encoder\.layers\.(\d+)\.self_attn\.k_proj\.", r"layers.\1.attn.k."),
    (r"encoder\.layers\.(\d+)\.self_attn\.v_proj\.", r"layers.\1.attn.v."),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"layers.\1.attn.out."),
    (r"encoder\.layers\.(\d+)\.layer_norm1\.", r"layers.\1.attn_norm."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc1\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layers\.(\d+)\.mlp\.fc2\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layers\.(\d+)\.layer_norm2\.", r"layers.\1.mlp_norm."),
    (r"final_layer_norm\.", "final_norm."),
)
# Full CLIP checkpoints prefix the text tower; transformers >= 5 saves CLIPTextModel bare.
PREFIXES = ("text_model.",)
IGNORED = r"embeddings\.position_ids"  # an arange buffer older checkpoints saved


@dataclass(frozen=True)
class CLIPTextConfig:
    """The CLIP text config fields the encoder needs; defaults are HuggingFace's (ViT-B/32)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


class CLIPLayer(nn.Module):
    """Pre-LN transformer layer: ``x = x + attn(LN(x)); x = x + mlp(LN(x))``."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.attn_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(dim, cfg.num_attention_heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(dim, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), keep)
        return x + self.mlp(self.mlp_norm(x))


class CLIPTextEncoder(nn.Module):
    """Causal CLIP text transformer returning per-token features ``[B, L, dim]`` after the
    final LayerNorm (the last hidden states); features at padded positions are zeroed."""

    def __init__(self, cfg: CLIPTextConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or CLIPTextConfig()
        dim = cfg.hidden_size
        self.dim = dim
        self.max_positions = cfg.max_position_embeddings
        self.token_embedding = nn.Embedding(cfg.vocab_size, dim)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, dim)
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> CLIPTextEncoder:
        """Load the text tower of a local CLIP checkpoint, frozen (eval mode, no gradients)."""
        model_dir = Path(model_dir)
        raw, weights = read_checkpoint(model_dir, "CLIP")
        model_type = raw.get("model_type")
        if model_type == "clip":
            raw = raw.get("text_config") or {}
        elif model_type != "clip_text_model":
            raise GazeNLQError(f"{model_dir}: model_type {model_type!r} is not a CLIP model "
                               "(expected 'clip' or 'clip_text_model')")
        model = cls(config_from_dict(CLIPTextConfig, raw))
        load_weights(model, weights, RULES, prefixes=PREFIXES, ignore=IGNORED)
        return model.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[B, L]`` (1 = real token) -> features ``[B, L, dim]``."""
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.position_embedding.weight[:length]
        valid = attention_mask > 0
        position = torch.arange(length, device=input_ids.device)
        causal = position[None, :] <= position[:, None]  # query i sees keys j <= i
        keep = causal & valid[:, None, None, :]  # [B, 1, L, L]
        for layer in self.layers:
            x = layer(x, keep)
        x = self.final_norm(x)
        return x * valid.unsqueeze(-1).to(x.dtype)
