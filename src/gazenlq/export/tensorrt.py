"""TensorRT engine builds from a bundle's ONNX graphs.

Where engines live, what their sidecars record, which graph each precision is built from
and the profile arithmetic are ``gazenlq.bundle.trt`` (read by the engine too); this module
resolves the profiles against the bundle and builds. ``tensorrt`` itself is imported only
through ``require_tensorrt``. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gazenlq.atomic import atomic_dir, write_json_atomic
from gazenlq.bundle.manifest import Manifest, verify_bundle
from gazenlq.bundle.trt import (
    ROWS_PER_CALL,
    Range,
    ShapeRange,
    axis_ranges,
    engine_dir,
    engine_sidecar,
    engine_source,
    profile_shapes,
    require_tensorrt,
)
from gazenlq.errors import GazeNLQError


@dataclass(frozen=True)
class TrtOptions:
    """Shape ranges of the optimisation profiles (lengths in feature steps) and precision.
    ``None`` takes the bundle's value: max length = the manifest's max length (the engine's
    default window), max batch = the search engine's default ``batch`` (larger calls, such
    as a ``--queries`` file's text, are split into rows of at most this)."""

    min_length: int | None = None  # default: the bundle's length multiple
    opt_length: int | None = None  # default: min(1024, max_length)
    max_length: int | None = None  # default: the manifest's max length
    opt_batch: int | None = None  # default: min(8, max_batch)
    max_batch: int | None = None  # default: the search engine's batch
    opt_text_length: int = 16
    fp16: bool = False
    workspace_gib: float = 4.0

    def ranges(self, manifest: Manifest) -> dict[str, Range]:
        """The (min, opt, max) of every named axis for ``manifest``'s bundle."""
        return axis_ranges(length_multiple=manifest.length_multiple,
                           max_tokens=int(manifest.text["max_tokens"]),
                           max_length=self.max_length or manifest.max_len,
                           max_batch=self.max_batch or ROWS_PER_CALL,
                           min_length=self.min_length,
                           opt_length=self.opt_length, opt_batch=self.opt_batch,
                           opt_text_length=self.opt_text_length)


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
    """Build one engine per graph at fp32 and, with ``options.fp16``, at fp16 too (as
    ``--fp16`` also writes the half-precision graphs), each precision into
    ``bundle_dir/tensorrt/<precision>`` atomically, every engine with its sidecar."""
    trt, capability = require_tensorrt()
    manifest: Manifest = verify_bundle(bundle_dir)
    ranges = options.ranges(manifest)
    written = []
    for precision in ("fp32", "fp16") if options.fp16 else ("fp32",):
        with atomic_dir(engine_dir(bundle_dir, precision)) as tmp:
            for name in manifest.graphs["fp32"]:
                graph, flags = engine_source(manifest, name, precision, trt.__version__)
                profiles = profile_shapes(graph, ranges)
                log(f"building the {precision} TensorRT engine of {graph.file}"
                    f"{' (' + ', '.join(flags) + ')' if flags else ''}")
                plan = _build_one(trt, Path(bundle_dir) / graph.file, flags, profiles,
                                  options.workspace_gib)
                (tmp / f"{name}.engine").write_bytes(plan)
                write_json_atomic(tmp / f"{name}.engine.json", engine_sidecar(
                    graph=graph, precision=precision,
                    onnx_sha256=manifest.files[graph.file].sha256,
                    trt_version=trt.__version__, compute_capability=capability,
                    profiles=profiles, flags=flags), indent=1)
                written.append(engine_dir(bundle_dir, precision) / f"{name}.engine")
    return written
