"""Reading HuggingFace checkpoints (``config.json`` + ``model.safetensors``) strictly.

Checkpoint names are mapped onto ours by regex rules; every checkpoint key must map to a
parameter (or be explicitly ignored), every parameter must be filled and every shape must
agree, so a wrong or truncated checkpoint fails loudly instead of running half-random.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from safetensors.torch import load_file
from torch import nn

from gazenlq.errors import GazeNLQError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
T = TypeVar("T")


def read_checkpoint(model_dir: Path, kind: str) -> tuple[dict[str, Any], Path]:
    """The parsed ``config.json`` and the weights path of a local HuggingFace model dir."""
    config, weights = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not (config.is_file() and weights.is_file()):
        raise GazeNLQError(f"{model_dir}: no {kind} model here (expected {CONFIG_FILE} and "
                           f"{WEIGHTS_FILE} in HuggingFace format)")
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GazeNLQError(f"{config}: unreadable model config ({exc})") from None
    if not isinstance(raw, dict):
        raise GazeNLQError(f"{config}: expected a JSON object")
    return raw, weights


def config_from_dict(cls: type[T], raw: dict[str, Any]) -> T:
    """Dataclass ``cls`` from the HuggingFace config keys it declares; others are ignored
    and absent ones keep the dataclass defaults (HF omits values equal to its defaults)."""
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{key: value for key, value in raw.items() if key in names})


def _listed(keys: Sequence[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _rename(key: str, rules: Sequence[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        renamed, hits = re.subn(f"^{pattern}", replacement, key, count=1)
        if hits:
            return renamed
    return None


def load_weights(module: nn.Module, path: Path, rules: Sequence[tuple[str, str]], *,
                 prefixes: Sequence[str] = (), ignore: str | None = None) -> None:
    """Fill ``module`` from the safetensors file ``path``.

    The first of ``prefixes`` that some key starts with (none: no prefix) selects the keys
    considered, e.g. the text tower of a full CLIP checkpoint, and is stripped before
    renaming; keys fully matching the regex ``ignore`` are skipped (buffers and heads the
    encoder does not use).
    """
    try:
        state = load_file(path)
    except Exception as exc:  # safetensors raises its own error types on bad files
        raise GazeNLQError(f"{path}: cannot read safetensors weights ({exc})") from None
    prefix = next((p for p in prefixes if any(key.startswith(p) for key in state)), "")
    expected = module.state_dict()
    mapped, unexpected = {}, []
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if ignore is not None and re.fullmatch(ignore, name):
            continue
        target = _rename(name, rules)
        if target is None or target not in expected:
            unexpected.append(key)
        else:
            mapped[target] = tensor
    missing = sorted(set(expected) - set(mapped))
    if unexpected or missing:
        raise GazeNLQError(f"{path}: weights do not fit {type(module).__name__}: "
                           f"unexpected keys [{_listed(unexpected)}], "
                           f"missing parameters [{_listed(missing)}]")
    wrong = [f"{name} {tuple(tensor.shape)} vs {tuple(expected[name].shape)}"
             for name, tensor in mapped.items() if tensor.shape != expected[name].shape]
    if wrong:
        raise GazeNLQError(f"{path}: weight shapes do not match the config: {_listed(wrong)}")
    module.load_state_dict(mapped, strict=True)
