"""Numba kernels of the query latency path: Soft-NMS, hard NMS, IoU and segment decoding.

Every kernel is ``@njit(cache=True, nogil=True)`` (the batched Soft-NMS also
``parallel=True``) and is compiled for a single signature, because the public functions
normalise their inputs (float32 / int64, C-contiguous, writeable) and validate them with
``ValueError`` first. The compiled code is cached on disk (next to the sources, or in
``NUMBA_CACHE_DIR``), so only the very first process on a machine pays the compilation;
:func:`warm_up` loads them all ahead of the first query. Importing this package pays Numba's
one-off per-process start-up (:func:`start_numba`), so no query does.
Segments are in feature steps; convert with ``gazenlq.timegrid.TimeGrid``.
"""

from ._boundary import start_numba
from .decode import (
    Candidates,
    PostprocessConfig,
    decode_rows,
    decode_segments,
    postprocess_query,
)
from .softnms import (
    BatchNMSResult,
    Method,
    NMSResult,
    iou_matrix,
    nms,
    soft_nms,
    soft_nms_batch,
)
from .warmup import warm_up

__all__ = [
    "BatchNMSResult",
    "Candidates",
    "Method",
    "NMSResult",
    "PostprocessConfig",
    "decode_rows",
    "decode_segments",
    "iou_matrix",
    "nms",
    "postprocess_query",
    "soft_nms",
    "soft_nms_batch",
    "warm_up",
]

start_numba()
