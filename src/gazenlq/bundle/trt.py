"""TensorRT engines of a bundle as files, and the shape profiles they (and onnxruntime's
TensorRT provider) accept: torch-free; ``tensorrt`` itself is imported only by
:func:`require_tensorrt`.

Engines are tied to the TensorRT version, the GPU architecture and the precision they
compute in, so each ``BUNDLE/tensorrt/<precision>/<graph>.engine`` has a sidecar
``<graph>.engine.json`` recording them, the profiles and the sha256 of the ONNX graph it was
built from. Which graph that is depends on the TensorRT major version (:func:`build_plan`:
10 builds fp16 engines from the fp32 graph with ``BuilderFlag.FP16``, 11 is strongly typed
and parses the fp16 graph), so the runner asks :func:`build_plan` too and looks for exactly
that graph and precision; a mismatch is refused with a "rebuild" message. The engines are
not part of the manifest (a bundle stays portable; engines are rebuilt per machine).
``gazenlq.export.tensorrt`` builds and writes them; ``gazenlq.engine.trt`` checks and runs
them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gazenlq.bundle.manifest import GraphSpec, Manifest, bundle_file
from gazenlq.bundle.shapes import pad_to
from gazenlq.errors import GazeNLQError, MissingDependencyError

ENGINE_DIR = "tensorrt"
SIDECAR_FORMAT = "gazenlq.trt-engine"
SIDECAR_VERSION = 2
REBUILD = "rebuild it: gaze-export BUNDLE --trt"
ShapeRange = dict[str, list[int]]  # min / opt / max -> shape
Range = tuple[int, int, int]  # min / opt / max of one named axis
BATCH = "batch"
ROWS_PER_CALL = 32
"""Rows per graph call: the search's default ``batch`` and the default max batch of the
TensorRT profiles built for it (one value, so engines fit the default search)."""


def engine_dir(bundle: Path, precision: str) -> Path:
    """Where the engines of one precision (fp32, fp16) live in ``bundle`` (inside it: a
    ``tensorrt`` symlink leading out is refused)."""
    return bundle_file(bundle, f"{ENGINE_DIR}/{precision}")


def engine_path(bundle: Path, graph: str, precision: str) -> Path:
    """Where the engine of ``graph`` (text, video, ground) at ``precision`` lives (inside
    ``bundle``, like :func:`engine_dir`)."""
    return bundle_file(bundle, f"{ENGINE_DIR}/{precision}/{graph}.engine")


def build_plan(trt_major: int, fp16: bool) -> tuple[str, list[str]]:
    """Which ONNX graph (its precision) an engine is built from, and the builder flags.
    TensorRT 10 still has ``BuilderFlag.FP16`` (fp32 graph, weakly typed); 11 is strongly
    typed, so half precision comes from the fp16 graph. Builder and runner both ask this."""
    if not fp16:
        return "fp32", []
    if trt_major < 11:
        return "fp32", ["FP16"]
    return "fp16", []


def trt_major(version: str) -> int:
    """``"10.9.0.34"`` -> 10."""
    return int(str(version).split(".")[0])


def engine_source(manifest: Manifest, graph: str, precision: str, trt_version: str
                  ) -> tuple[GraphSpec, list[str]]:
    """The ONNX graph an engine of ``graph`` at ``precision`` is built from on this
    TensorRT, and the builder flags: what the builder writes into the sidecar and exactly
    what the runner looks for. The engine's I/O is that graph's."""
    source, flags = build_plan(trt_major(trt_version), precision == "fp16")
    return manifest.graph(graph, source), flags


# -- shape profiles ----------------------------------------------------------------------

def _ordered(name: str, lo: int, opt: int, hi: int) -> Range:
    if not 1 <= lo <= opt <= hi:
        raise GazeNLQError(f"TensorRT profile for {name}: need 1 <= min <= opt <= max, got "
                           f"{lo} / {opt} / {hi}")
    return lo, opt, hi


def axis_ranges(*, length_multiple: int, max_tokens: int, max_length: int, max_batch: int,
                min_length: int | None = None, opt_length: int | None = None,
                opt_batch: int | None = None, opt_text_length: int = 16) -> dict[str, Range]:
    """(min, opt, max) of every named axis; lengths rounded up to the length multiple.
    Defaults: min length one multiple, opt length min(1024, max), opt batch min(8, max)."""
    m = length_multiple
    hi = pad_to(max_length, m)
    return {
        BATCH: _ordered(BATCH, 1, min(8, max_batch) if opt_batch is None else opt_batch,
                        max_batch),
        "length": _ordered("length", pad_to(min_length or m, m),
                           pad_to(min(1024, hi) if opt_length is None else opt_length, m), hi),
        "text_length": _ordered("text_length", 1, min(opt_text_length, max_tokens),
                                max_tokens),
    }


def profile_shapes(graph: GraphSpec, ranges: dict[str, Range]) -> dict[str, ShapeRange]:
    """``{input: {"min": shape, "opt": shape, "max": shape}}`` for every input of ``graph``;
    inputs sharing an axis (features and their mask) get the same bounds."""
    return {spec.name: {key: [ranges[d][k] if isinstance(d, str) else d for d in spec.shape]
                        for k, key in enumerate(("min", "opt", "max"))}
            for spec in graph.inputs}


def profile_bounds(graph: GraphSpec, profiles: dict[str, ShapeRange]
                   ) -> dict[str, tuple[int, int]]:
    """(min, max) of every named axis of ``graph``'s inputs under ``profiles`` (the
    tightest where several inputs share an axis)."""
    bounds: dict[str, tuple[int, int]] = {}
    for spec in graph.inputs:
        shapes = profiles.get(spec.name)
        if shapes is None:
            raise GazeNLQError(f"the {graph.name} profile has no shapes for input "
                               f"{spec.name}; {REBUILD}")
        for k, axis in enumerate(spec.shape):
            if isinstance(axis, str):
                lo, hi = bounds.get(axis, (0, 1 << 62))
                bounds[axis] = (max(lo, shapes["min"][k]), min(hi, shapes["max"][k]))
    return bounds


def check_fits(graph: GraphSpec, bounds: dict[str, tuple[int, int]],
               shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse (one line) feeds whose axes other than the batch fall outside ``bounds``:
    rows are split to fit (:func:`row_chunks`), lengths cannot be."""
    for spec in graph.inputs:
        for k, axis in enumerate(spec.shape):
            if not isinstance(axis, str) or axis == BATCH or axis not in bounds:
                continue
            lo, hi = bounds[axis]
            size = shapes[spec.name][k]
            if not lo <= size <= hi:
                raise GazeNLQError(
                    f"{where}: input {spec.name} has {axis} {size}, outside the {lo}..{hi} "
                    f"its TensorRT profile accepts; search with a smaller --window, or "
                    f"rebuild with gaze-export BUNDLE --trt --trt-max-length {size}")


def row_chunks(rows: int, max_rows: int) -> list[slice]:
    """Consecutive slices of at most ``max_rows`` rows covering ``rows`` rows."""
    if max_rows < 1:
        raise GazeNLQError(f"a TensorRT profile's max batch must be >= 1, got {max_rows}")
    return [slice(i, min(i + max_rows, rows)) for i in range(0, rows, max_rows)] or [
        slice(0, 0)]


# -- sidecars ----------------------------------------------------------------------------

class EngineMismatchError(GazeNLQError):
    """A TensorRT engine was built for another TensorRT, GPU, precision or ONNX graph."""


def engine_sidecar(*, graph: GraphSpec, precision: str, onnx_sha256: str, trt_version: str,
                   compute_capability: str, profiles: dict[str, ShapeRange],
                   flags: list[str]) -> dict[str, Any]:
    """What an engine serves: ``precision`` (what it computes in) and the ONNX ``graph``
    it was parsed from (which may be the fp32 graph of an fp16 engine)."""
    return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "graph": graph.name,
            "precision": precision, "onnx": graph.file, "onnx_precision": graph.precision,
            "onnx_sha256": onnx_sha256, "builder_flags": flags, "tensorrt": trt_version,
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
                         compute_capability: str, precision: str, onnx_file: str,
                         onnx_sha256: str, engine: str = "engine") -> None:
    """Refuse an engine built by another TensorRT, for another GPU, at another precision
    or from another graph than ``onnx_file`` (``onnx_sha256``)."""
    problems = []
    if sidecar.get("version") != SIDECAR_VERSION:
        problems.append(f"sidecar version {sidecar.get('version')}, this gazenlq writes "
                        f"{SIDECAR_VERSION}")
    if sidecar.get("tensorrt") != trt_version:
        problems.append(f"built with TensorRT {sidecar.get('tensorrt')}, this is {trt_version}")
    if sidecar.get("compute_capability") != compute_capability:
        problems.append(f"built for compute capability {sidecar.get('compute_capability')}, "
                        f"this GPU is {compute_capability}")
    if sidecar.get("precision") != precision:
        problems.append(f"built for {sidecar.get('precision')}, asked for {precision}")
    if sidecar.get("onnx") != onnx_file or sidecar.get("onnx_sha256") != onnx_sha256:
        problems.append(f"built from {sidecar.get('onnx', 'another ONNX graph')} "
                        f"(sha256 {str(sidecar.get('onnx_sha256'))[:12]}), this TensorRT "
                        f"needs {onnx_file} (sha256 {onnx_sha256[:12]})")
    if problems:
        raise EngineMismatchError(f"{engine}: {'; '.join(problems)}; {REBUILD}"
                                  f"{' --fp16' if precision == 'fp16' else ''}")


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
