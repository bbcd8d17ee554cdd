"""Where training runs: device choice and mixed precision (CUDA only), one place for both.

``auto`` picks CUDA when PyTorch sees a GPU, else the CPU. On CUDA the forward pass and the
losses run under autocast: bfloat16 where the GPU computes it natively (compute capability
8.0 and newer: Ampere, Ada such as the RTX 4090, Hopper, Blackwell; no loss scaling needed),
else float16 with a gradient scaler (:func:`autocast_dtype`). PyTorch's
``is_bf16_supported()`` counts emulation by default and says yes on a Turing or Volta GPU,
where bfloat16 is emulated and slow; the rule here is its ``including_emulation=False``
answer for the training device. The CPU runs float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gazenlq.errors import GazeNLQError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a torch device, or a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (a CPU-only build)"
            raise GazeNLQError(f"device {name!r}: PyTorch sees no CUDA GPU (torch "
                               f"{torch.__version__}, CUDA {build}); use --device cpu")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GazeNLQError(f"device {name!r}: only {torch.cuda.device_count()} CUDA "
                               "device(s) present")
        return dev
    raise GazeNLQError(f"unknown device {name!r} (expected {', '.join(DEVICE_CHOICES)} or "
                       "cuda:N)")


BF16_MIN_CAPABILITY = (8, 0)


def autocast_dtype(capability: tuple[int, int]) -> torch.dtype:
    """Mixed-precision dtype on a CUDA GPU of ``capability`` (major, minor): bfloat16 where
    the tensor cores compute it (>= 8.0), float16 (with loss scaling) below."""
    return torch.bfloat16 if tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


@dataclass
class Precision:
    """Autocast and loss scaling for one device (no-ops on the CPU)."""

    device: torch.device
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    @classmethod
    def for_device(cls, device: torch.device) -> Precision:
        if device.type != "cuda":
            return cls(device, None, torch.amp.GradScaler("cpu", enabled=False))
        dtype = autocast_dtype(torch.cuda.get_device_capability(device))
        return cls(device, dtype,
                   torch.amp.GradScaler("cuda", enabled=dtype == torch.float16))

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            yield

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; other values unchanged."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device
