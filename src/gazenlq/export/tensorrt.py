"""TensorRT engines from a bundle's ONNX graphs: optimisation profiles and the build.

Where engines live and what their sidecars record is ``gazenlq.bundle.trt`` (read by the
engine too); this module chooses the profiles and builds. Profiles are pure functions;
``tensorrt`` itself is imported only through ``require_tensorrt``. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gazenlq.atomic import atomic_dir, write_json_atomic
from gazenlq.bundle.manifest import GraphSpec, Manifest, verify_bundle
from gazenlq.bundle.shapes import pad_to
from gazenlq.bundle.trt import (
    ENGINE_DIR,
    ShapeRange,
    engine_sidecar,
    require_tensorrt,
)
from gazenlq.errors import GazeNLQError

Range = tuple[int, int, int]


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
    return {
        "batch": _ordered("batch", 1, options.opt_batch, options.max_batch),
        "length": _ordered("length", pad_to(options.min_length or m, m),
                           pad_to(options.opt_length, m), pad_to(options.max_length, m)),
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
