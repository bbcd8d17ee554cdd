"""Native TensorRT engines of a bundle (``gaze-export BUNDLE --trt``) as graph runners.

Written against TensorRT's documented Python API (runtime ``deserialize_cuda_engine``,
``create_execution_context``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``) with device memory from cuda-python's runtime bindings. Every engine
is checked against its sidecar first: another TensorRT, GPU or ONNX graph is refused with
a "rebuild" message. Where tensorrt, cuda-python or a GPU is missing, one clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gazenlq.bundle.manifest import GraphSpec, Manifest
from gazenlq.bundle.trt import (
    REBUILD,
    check_engine_sidecar,
    engine_path,
    read_sidecar,
    require_tensorrt,
)
from gazenlq.errors import GazeNLQError, MissingDependencyError


def load_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise MissingDependencyError("native TensorRT engines need cuda-python: pip "
                                         "install 'gazenlq[trt]' on a GPU machine") from None
    return cudart


def _check(result: tuple) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise GazeNLQError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class TrtGraph:
    """One engine: ``run(feeds) -> outputs`` (numpy in, numpy out, in the spec's order)."""

    def __init__(self, bundle: Path, manifest: Manifest, spec: GraphSpec) -> None:
        trt, capability = require_tensorrt()
        self.cudart = load_cudart()
        path = engine_path(bundle, spec.name)
        if not path.is_file():
            raise GazeNLQError(f"{path}: no TensorRT engine; build it: gaze-export "
                               f"{bundle} --trt")
        check_engine_sidecar(read_sidecar(path.with_suffix(".engine.json")),
                             trt_version=trt.__version__, compute_capability=capability,
                             onnx_sha256=manifest.files[spec.file].sha256, engine=str(path))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise GazeNLQError(f"{path}: TensorRT cannot load this engine; {REBUILD}")
        self.context = self.engine.create_execution_context()
        self.trt = trt
        self.spec = spec
        self.stream = _check(self.cudart.cudaStreamCreate())

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cu, ctx, trt = self.cudart, self.context, self.trt
        h2d = cu.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        buffers = []
        try:
            for name, arr in feeds.items():
                arr = np.ascontiguousarray(arr)
                ctx.set_input_shape(name, arr.shape)
                ptr = _check(cu.cudaMalloc(max(arr.nbytes, 1)))
                buffers.append(ptr)
                _check(cu.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream))
                ctx.set_tensor_address(name, ptr)
            outs = []
            for t in self.spec.outputs:
                shape = tuple(ctx.get_tensor_shape(t.name))
                host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(t.name)))
                ptr = _check(cu.cudaMalloc(max(host.nbytes, 1)))
                buffers.append(ptr)
                ctx.set_tensor_address(t.name, ptr)
                outs.append((host, ptr))
            if not ctx.execute_async_v3(self.stream):
                raise GazeNLQError(f"TensorRT failed to run the {self.spec.name} engine")
            for host, ptr in outs:
                _check(cu.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h,
                                          self.stream))
            _check(cu.cudaStreamSynchronize(self.stream))
            return [host for host, _ in outs]
        finally:
            for ptr in buffers:
                cu.cudaFree(ptr)
