"""The frozen gaze estimator's tokens of every clip, computed once per stage-2 run.

With the estimator frozen, a clip's gaze tokens never change during stage 2, so they are
computed once - over the whole clip, exactly as inference computes them
(``infer.clip_inputs``) - and kept on disk as a Zarr v3 group (one array per clip,
published atomically). Training windows and every epoch's validation read from it, which
takes the estimator (and, for GazeNLQ*, the 3-D map encoder of the inverted maps) out of
every training step. The group records a fingerprint of the estimator's weights and the
variant, so a resumed run reuses it and a changed estimator rebuilds it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr

from gazenlq.atomic import atomic_dir
from gazenlq.progress import progress
from gazenlq.training.data import ClipItem
from gazenlq.training.estimator import GazeEstimator
from gazenlq.training.infer import clip_inputs


def fingerprint(estimator: GazeEstimator, variant: str) -> str:
    """SHA-256 of the estimator's weights (names, shapes, values) and the variant."""
    h = hashlib.sha256(variant.encode())
    for name, t in sorted(estimator.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class GazeTokens:
    """Read side: ``read(clip_uid, start, stop)`` -> float32 ``[stop - start, D]``.

    Holds only the path until first use, so it pickles into DataLoader workers, each of
    which opens the group itself."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._group: zarr.Group | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_group": None}

    def _open(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(self.path, mode="r")
        return self._group

    @property
    def fingerprint(self) -> str:
        return str(self._open().attrs["fingerprint"])

    def read(self, clip_uid: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self._open()[clip_uid][start:stop], dtype=np.float32)

    @classmethod
    def build(cls, path: Path, estimator: GazeEstimator, items: list[ClipItem], *,
              variant: str, multiple: int, quiet: bool = False) -> GazeTokens:
        """The tokens of ``items`` at ``path``; reused when the group there was made by the
        same estimator weights and variant, else (re)computed and published atomically."""
        want = fingerprint(estimator, variant)
        if (path / "zarr.json").is_file():
            existing = cls(path)
            if existing.fingerprint == want and all(
                    it.clip_uid in existing._open() for it in items):
                return existing
        device = next(estimator.parameters()).device
        estimator.eval()
        with atomic_dir(path) as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            done: set[str] = set()
            for item in progress(items, desc="gaze tokens", unit="clip", quiet=quiet):
                if item.clip_uid in done:
                    continue
                _, _, gaze = clip_inputs(item, multiple, estimator, variant, device)
                tokens = gaze[0, : item.length].float().cpu().numpy()
                arr = group.create_array(item.clip_uid, shape=tokens.shape, dtype="float32",
                                         chunks=(min(len(tokens), 1024), tokens.shape[1]))
                arr[:] = tokens
                done.add(item.clip_uid)
            group.attrs["fingerprint"] = want
        return cls(path)
