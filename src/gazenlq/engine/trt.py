"""Native TensorRT engines of a bundle (``gaze-export BUNDLE --trt``) as graph runners.

Written against TensorRT's documented Python API (runtime ``deserialize_cuda_engine``,
``create_execution_context``, ``set_input_shape`` (returns False for a shape outside the
profile), ``set_tensor_address``, ``execute_async_v3``) with device memory and a stream from
cuda-python's runtime bindings, every call's status checked. Each engine is checked against
its sidecar first: another TensorRT, GPU, precision or ONNX graph is refused with a
"rebuild" message. Device buffers are kept per tensor and grown to the next power of two
only when a larger shape arrives (a few allocations per search, not two per call); ``close``
frees them and destroys the stream. Where tensorrt, cuda-python or a GPU is missing, one
clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gazenlq.bundle.manifest import Manifest
from gazenlq.bundle.trt import (
    REBUILD,
    check_engine_sidecar,
    engine_path,
    engine_source,
    profile_bounds,
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


def check_cuda(result: Any, what: str) -> Any:
    """The value of a cuda-python call ``(err, *values)``, or one line naming ``what`` and
    the CUDA error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise GazeNLQError(f"CUDA error in {what}: {getattr(err, 'name', err)} ({int(err)})")
    return rest[0] if len(rest) == 1 else (rest or None)


def bucket_bytes(nbytes: int) -> int:
    """Capacity of a device buffer holding ``nbytes``: the next power of two (at least
    256 bytes), so that growing lengths reallocate a logarithmic number of times."""
    return max(256, 1 << max(0, int(nbytes) - 1).bit_length())


def check_dtype(name: str, got: np.dtype, expected: np.dtype, engine: str) -> None:
    """Refuse a feed whose dtype is not the engine tensor's (TensorRT reads raw bytes)."""
    if np.dtype(got) != np.dtype(expected):
        raise GazeNLQError(f"{engine}: input {name} is {np.dtype(got)}, the engine expects "
                           f"{np.dtype(expected)}")


class TrtGraph:
    """One engine: ``run(feeds) -> outputs`` (numpy in, numpy out, in the spec's order)."""

    def __init__(self, bundle: Path, manifest: Manifest, name: str, precision: str) -> None:
        trt, capability = require_tensorrt()
        self.cudart = load_cudart()
        self.trt = trt
        path = engine_path(bundle, name, precision)
        self.where = str(path)
        if not path.is_file():
            raise GazeNLQError(f"{path}: no {precision} TensorRT engine; build it: "
                               f"gaze-export {bundle} --trt"
                               f"{' --fp16' if precision == 'fp16' else ''}")
        self.spec, _ = engine_source(manifest, name, precision, trt.__version__)
        sidecar = read_sidecar(path.with_suffix(".engine.json"))
        check_engine_sidecar(sidecar, trt_version=trt.__version__,
                             compute_capability=capability, precision=precision,
                             onnx_file=self.spec.file,
                             onnx_sha256=manifest.files[self.spec.file].sha256,
                             engine=str(path))
        self.bounds = profile_bounds(self.spec, sidecar["profiles"])
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise GazeNLQError(f"{path}: TensorRT cannot load this engine; {REBUILD}")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise GazeNLQError(f"{path}: TensorRT cannot create an execution context "
                               "(out of GPU memory?)")
        self.dtypes = {t.name: np.dtype(trt.nptype(self.engine.get_tensor_dtype(t.name)))
                       for t in (*self.spec.inputs, *self.spec.outputs)}
        self.buffers: dict[str, tuple[int, int]] = {}  # tensor -> (device pointer, bytes)
        self.stream = check_cuda(self.cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _buffer(self, name: str, nbytes: int) -> int:
        """The device buffer of tensor ``name``, grown to hold ``nbytes`` when needed."""
        ptr, size = self.buffers.get(name, (0, 0))
        if nbytes > size:
            if ptr:
                del self.buffers[name]
                check_cuda(self.cudart.cudaFree(ptr), "cudaFree")
            size = bucket_bytes(nbytes)
            ptr = check_cuda(self.cudart.cudaMalloc(size), f"cudaMalloc({size})")
            self.buffers[name] = (ptr, size)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cu, ctx = self.cudart, self.context
        h2d = cu.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cu.cudaMemcpyKind.cudaMemcpyDeviceToHost
        held = []  # host inputs must outlive their asynchronous copies
        for spec in self.spec.inputs:
            arr = np.ascontiguousarray(feeds[spec.name])
            held.append(arr)
            check_dtype(spec.name, arr.dtype, self.dtypes[spec.name], self.where)
            if not ctx.set_input_shape(spec.name, arr.shape):
                raise GazeNLQError(f"{self.where}: input {spec.name} of shape {arr.shape} is "
                                   f"outside the engine's profile {self.bounds}; {REBUILD}")
            ptr = self._buffer(spec.name, arr.nbytes)
            check_cuda(cu.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self.stream),
                       f"copying {spec.name} to the GPU")
            if not ctx.set_tensor_address(spec.name, ptr):
                raise GazeNLQError(f"{self.where}: TensorRT refused the address of "
                                   f"{spec.name}")
        outs = []
        for t in self.spec.outputs:
            shape = tuple(ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                raise GazeNLQError(f"{self.where}: the shape of output {t.name} is unknown "
                                   f"({shape}) after setting every input's shape")
            host = np.empty(shape, dtype=self.dtypes[t.name])
            ptr = self._buffer(t.name, host.nbytes)
            if not ctx.set_tensor_address(t.name, ptr):
                raise GazeNLQError(f"{self.where}: TensorRT refused the address of {t.name}")
            outs.append((host, ptr))
        if not ctx.execute_async_v3(self.stream):
            raise GazeNLQError(f"{self.where}: TensorRT failed to run the engine")
        for host, ptr in outs:
            check_cuda(cu.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self.stream),
                       "copying an output from the GPU")
        check_cuda(cu.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        del held
        return [host for host, _ in outs]

    def close(self) -> None:
        """Free the device buffers and destroy the stream (idempotent); every status is
        checked, the first failure raised after all were released."""
        errors = []
        for name, (ptr, _) in list(self.buffers.items()):
            del self.buffers[name]
            try:
                check_cuda(self.cudart.cudaFree(ptr), f"cudaFree({name})")
            except GazeNLQError as exc:
                errors.append(exc)
        if self.stream is not None:
            stream, self.stream = self.stream, None
            try:
                check_cuda(self.cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")
            except GazeNLQError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
