"""TensorRT engines from a bundle's ONNX graphs: optimisation profiles, build, sidecars.

Engines are tied to the TensorRT version and the GPU architecture, so each
``BUNDLE/tensorrt/<graph>.engine`` has a sidecar ``<graph>.engine.json`` recording both,
the profiles and the sha256 of the ONNX graph it was built from; a mismatched engine is
refused with a "rebuild" message. The engines are not part of the manifest (a bundle stays
portable; engines are rebuilt per machine). Profiles and sidecars are pure functions;
``tensorrt`` itself is imported only by :func:`require_tensorrt`. Torch-free.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gazenlq.atomic import atomic_dir, write_json_atomic
from gazenlq.errors import GazeNLQError, MissingDependencyError
from gazenlq.export.manifest import GraphSpec, Manifest, verify_bundle

ENGINE_DIR = "tensorrt"
SIDECAR_FORMAT = "gazenlq.trt-engine"
REBUILD = "rebuild it: gaze-export BUNDLE --trt"
Range = tuple[int, int, int]
ShapeRange = dict[str, list[int]]  # min / opt / max -> shape


class EngineMismatchError(GazeNLQError):
    """A TensorRT engine was built for another TensorRT, GPU or ONNX graph."""


@dataclass(frozen=True)
class TrtOptions:
    """Shape ranges of the optimisation profiles (lengths in feature steps) and precision."""

    min_length: int | None = None  # default: the bundle's length multiple
    opt_length: int = 1024
    max_length: int = 2560
    opt_batch: int = 8
    max_batch: int = 32
    opt_text_length: int = 16
    fp16: bool = False
    workspace_gib: float = 4.0


def _ordered(name: str, lo: int, opt: int, hi: int) -> Range:
    if not 1 <= lo <= opt <= hi:
        raise GazeNLQError(f"TensorRT profile for {name}: need 1 <= min <= opt <= max, got "
                           f"{lo} / {opt} / {hi}")
    return lo, opt, hi


def axis_ranges(options: TrtOptions, *, length_multiple: int, max_tokens: int
                ) -> dict[str, Range]:
    """(min, opt, max) of every named axis; lengths rounded up to the length multiple."""
    m = length_multiple

    def up(n: int) -> int:
        return max(m, -(-n // m) * m)

    return {
        "batch": _ordered("batch", 1, options.opt_batch, options.max_batch),
        "length": _ordered("length", up(options.min_length or m), up(options.opt_length),
                           up(options.max_length)),
        "text_length": _ordered("text_length", 1, min(options.opt_text_length, max_tokens),
                                max_tokens),
    }


def profile_shapes(graph: GraphSpec, ranges: dict[str, Range]) -> dict[str, ShapeRange]:
    """``{input: {"min": shape, "opt": shape, "max": shape}}`` for every input of ``graph``;
    inputs sharing an axis (features and their mask) get the same bounds."""
    return {spec.name: {key: [ranges[d][k] if isinstance(d, str) else d for d in spec.shape]
                        for k, key in enumerate(("min", "opt", "max"))}
            for spec in graph.inputs}


def build_plan(trt_major: int, fp16: bool) -> tuple[str, list[str]]:
    """Which ONNX precision to parse and which builder flags to set. TensorRT 10 still has
    ``BuilderFlag.FP16`` (fp32 graph, weakly typed); 11 is strongly typed, so half precision
    comes from the fp16 graph."""
    if not fp16:
        return "fp32", []
    if trt_major < 11:
        return "fp32", ["FP16"]
    return "fp16", []


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


def _build_one(trt: Any, path: Path, flags: list[str], profiles: dict[str, ShapeRange],
               workspace_gib: float) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise GazeNLQError(f"{path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, shapes in profiles.items():
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise GazeNLQError(f"{path}: TensorRT failed to build an engine (see its log above)")
    return bytes(plan)


def build_engines(bundle_dir: Path, options: TrtOptions,
                  log: Callable[[str], None] = lambda _: None) -> list[Path]:
    """Build one engine per graph into ``bundle_dir/tensorrt`` (atomically) with sidecars."""
    trt, capability = require_tensorrt()
    manifest: Manifest = verify_bundle(bundle_dir)
    precision, flags = build_plan(int(trt.__version__.split(".")[0]), options.fp16)
    ranges = axis_ranges(options, length_multiple=manifest.length_multiple,
                         max_tokens=int(manifest.text["max_tokens"]))
    written = []
    with atomic_dir(Path(bundle_dir) / ENGINE_DIR) as tmp:
        for name in manifest.graphs["fp32"]:
            graph = manifest.graph(name, precision)
            profiles = profile_shapes(graph, ranges)
            log(f"building the TensorRT engine of {graph.file} ({', '.join(flags) or precision})")
            plan = _build_one(trt, Path(bundle_dir) / graph.file, flags, profiles,
                              options.workspace_gib)
            (tmp / f"{name}.engine").write_bytes(plan)
            write_json_atomic(tmp / f"{name}.engine.json", engine_sidecar(
                graph=graph, onnx_sha256=manifest.files[graph.file].sha256,
                trt_version=trt.__version__, compute_capability=capability,
                profiles=profiles, flags=flags), indent=1)
            written.append(Path(bundle_dir) / ENGINE_DIR / f"{name}.engine")
    return written
