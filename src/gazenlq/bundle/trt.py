"""TensorRT engines of a bundle as files: where they live and the sidecar that says what each
was built for (torch-free; ``tensorrt`` itself is imported only by :func:`require_tensorrt`).

Engines are tied to the TensorRT version and the GPU architecture, so each
``BUNDLE/tensorrt/<graph>.engine`` has a sidecar ``<graph>.engine.json`` recording both,
the profiles and the sha256 of the ONNX graph it was built from; a mismatched engine is
refused with a "rebuild" message. The engines are not part of the manifest (a bundle stays
portable; engines are rebuilt per machine). ``gazenlq.export.tensorrt`` builds and writes
them; ``gazenlq.engine.trt`` checks and runs them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gazenlq.bundle.manifest import GraphSpec, bundle_file
from gazenlq.errors import GazeNLQError, MissingDependencyError

ENGINE_DIR = "tensorrt"
SIDECAR_FORMAT = "gazenlq.trt-engine"
REBUILD = "rebuild it: gaze-export BUNDLE --trt"
ShapeRange = dict[str, list[int]]  # min / opt / max -> shape


def engine_path(bundle: Path, graph: str) -> Path:
    """Where the engine of ``graph`` (text, video, ground) lives in ``bundle`` (inside it:
    a ``tensorrt`` symlink leading out is refused)."""
    return bundle_file(bundle, f"{ENGINE_DIR}/{graph}.engine")


class EngineMismatchError(GazeNLQError):
    """A TensorRT engine was built for another TensorRT, GPU or ONNX graph."""


def engine_sidecar(*, graph: GraphSpec, onnx_sha256: str, trt_version: str,
                   compute_capability: str, profiles: dict[str, ShapeRange],
                   flags: list[str]) -> dict[str, Any]:
    return {"format": SIDECAR_FORMAT, "version": 1, "graph": graph.name, "onnx": graph.file,
            "onnx_sha256": onnx_sha256, "precision": graph.precision,
            "builder_flags": flags, "tensorrt": trt_version,
            "compute_capability": compute_capability, "profiles": profiles}


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        sidecar = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineMismatchError(f"{path}: unreadable engine sidecar ({exc}); {REBUILD}"
                                  ) from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise EngineMismatchError(f"{path}: not a gazenlq engine sidecar; {REBUILD}")
    return sidecar


def check_engine_sidecar(sidecar: dict[str, Any], *, trt_version: str,
                         compute_capability: str, onnx_sha256: str, engine: str = "engine"
                         ) -> None:
    """Refuse an engine built by another TensorRT, for another GPU or from another graph."""
    problems = []
    if sidecar.get("tensorrt") != trt_version:
        problems.append(f"built with TensorRT {sidecar.get('tensorrt')}, this is {trt_version}")
    if sidecar.get("compute_capability") != compute_capability:
        problems.append(f"built for compute capability {sidecar.get('compute_capability')}, "
                        f"this GPU is {compute_capability}")
    if sidecar.get("onnx_sha256") != onnx_sha256:
        problems.append(f"built from another {sidecar.get('onnx', 'ONNX graph')} "
                        "(sha256 differs)")
    if problems:
        raise EngineMismatchError(f"{engine}: {'; '.join(problems)}; {REBUILD}")


def parse_compute_capability(nvidia_smi_output: str) -> str | None:
    """First GPU's ``major.minor`` from ``nvidia-smi --query-gpu=compute_cap`` output."""
    lines = [line.strip() for line in nvidia_smi_output.splitlines() if line.strip()]
    if not lines:
        return None
    major, _, minor = lines[0].partition(".")
    return f"{int(major)}.{int(minor or 0)}" if major.isdigit() and minor.isdigit() else None


def gpu_compute_capability() -> str | None:
    """The first NVIDIA GPU's compute capability, or None without a GPU or driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    return parse_compute_capability(out.stdout)


def require_tensorrt() -> tuple[Any, str]:
    """The ``tensorrt`` module and the GPU's compute capability, or one clear error."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError("--trt needs the tensorrt package and an NVIDIA GPU: "
                                     "pip install 'gazenlq[trt]' on a GPU machine") from None
    capability = gpu_compute_capability()
    if capability is None:
        raise GazeNLQError("--trt needs an NVIDIA GPU, and nvidia-smi found none")
    return tensorrt, capability
