"""Checkpoint -> validated ONNX bundle (+ fp16 variant, TensorRT engines).

The bundle format itself (manifest, post-processing, shape rules, engine sidecars) is
``gazenlq.bundle``, which the engine reads; this package writes it. Modules: ``graphs`` (the
exported modules), ``onnx_export``, ``fp16``, ``validate`` and ``exporter`` (need torch and
onnx), ``tensorrt`` (profiles and the engine build; torch-free). Names are resolved lazily
so that importing this package imports neither torch nor onnx.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "TrtOptions": "tensorrt", "build_engines": "tensorrt", "Report": "exporter",
    "ValidationFailed": "exporter", "export_bundle": "exporter", "check_bundle": "exporter",
    "nlq_cases": "exporter",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
