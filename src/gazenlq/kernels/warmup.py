"""Load every kernel ahead of the first query."""

from __future__ import annotations

import numpy as np

from .decode import decode_rows, decode_segments, postprocess_query
from .softnms import iou_matrix, nms, soft_nms, soft_nms_batch


def warm_up(*, search_only: bool = False) -> None:
    """Load every kernel now (``search_only``: the two a search calls, decoding and
    Soft-NMS; the batched kernel's thread pool is the slowest to load), so that the first
    real call pays nothing but its own work.

    A new process's first Numba call also pays Numba's one-off start-up (about 0.1-0.2 s:
    it imports its whole implementation), whatever the function; a service calls this while
    it starts. Kernels come from Numba's on-disk cache, or are compiled and cached (several
    seconds) on the very first run on a machine.
    """
    segments = np.array([[0.0, 2.0], [1.0, 3.0]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    soft_nms(segments, scores, top_k=1, voting_thresh=0.5)
    decode_rows(np.zeros((1, 3), np.float32), np.ones((1, 3, 2), np.float32), [2, 1], [1, 2])
    if search_only:
        return
    decode_segments(np.zeros(3, np.float32), np.ones((3, 2), np.float32), [2, 1], [1, 2])
    soft_nms_batch(segments, scores, [0, 2], top_k=1)
    nms(segments, scores, 0.5)
    iou_matrix(segments, segments)
    postprocess_query(np.zeros(3, np.float32), np.ones((3, 2), np.float32), [2, 1], [1, 2])
