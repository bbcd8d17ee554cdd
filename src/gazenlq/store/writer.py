"""Streaming, atomic writer of one video's feature store."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from gazenlq.atomic import owner_alive
from gazenlq.errors import StoreError
from gazenlq.store.schema import (
    DEFAULT_CHUNK_STEPS,
    GAZE_INPUT,
    GAZE_MAPS,
    GAZE_TYPE,
    MAP_SIZE,
    VIDEO,
    GazeType,
    StoreInfo,
)
from gazenlq.timegrid import EGO4D, TimeGrid

COMPRESSOR = {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"}
"""Blosc settings of every array (Zarr is imported only by a writer: readers of an index
never need it)."""
_GAZE_TYPE_FILL = 255  # not a GazeType: a missing chunk reads as invalid
ABORT_TRIES, ABORT_SETTLE_S = 20, 0.05
"""A failed write's partial store is removed until it stays gone, for at most ~1 s."""


def partial_paths(path: Path) -> list[Path]:
    """Partial writes of ``path`` (hidden siblings ``.NAME.partial-PID-RANDOM``)."""
    return sorted(path.parent.glob(f".{path.name}.partial-*"))


class StoreWriter:
    """Appends features chunk by chunk; :meth:`finish` publishes the store atomically.

    Data goes to a hidden sibling directory; only a finished store (attribute ``complete``
    true) is renamed to ``path``, so a crash never leaves a half store
    that looks complete. Leftovers of an interrupted write of the same path (whose process
    is gone) are removed.
    """

    def __init__(self, path: str | os.PathLike, *, video_uid: str, video_dim: int,
                 gaze_dim: int, grid: TimeGrid = EGO4D, duration_s: float | None = None,
                 video_sources: tuple[str, ...] = (), gaze_sources: tuple[str, ...] = (),
                 with_gaze_maps: bool = False, dtype: str = "float16",
                 chunk_steps: int = DEFAULT_CHUNK_STEPS, overwrite: bool = False,
                 extra_attrs: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path}: already exists (pass overwrite to replace it)")
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise StoreError(f"feature dtype {dtype!r} not supported: use float16 or float32")
        if video_dim <= 0 or gaze_dim <= 0 or chunk_steps <= 0:
            raise StoreError("video_dim, gaze_dim and chunk_steps must be positive")
        for stale in partial_paths(self.path):
            if not owner_alive(stale):  # never pull a live writer's data from under it
                shutil.rmtree(stale, ignore_errors=True)
        self.overwrite = overwrite
        self.video_uid = video_uid
        self.grid = grid
        self.duration_s = duration_s
        self.sources = (tuple(video_sources), tuple(gaze_sources))
        self.with_gaze_maps = with_gaze_maps
        self.chunk_steps = chunk_steps
        self.extra_attrs = dict(extra_attrs or {})
        self.num_steps = 0
        self._tmp = (self.path.parent
                     / f".{self.path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done = False
        with self._writing():  # a full disk here leaves nothing behind either
            self._create(video_dim, gaze_dim, dtype, chunk_steps)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Any failure of a write discards the partial store; an operating-system error
        (a full disk) becomes one line naming the store."""
        try:
            yield
        except OSError as exc:
            self.abort()
            raise StoreError(f"{self.path}: cannot be written ({exc.strerror or exc}); "
                             "nothing of it was kept") from None
        except BaseException:
            self.abort()
            raise

    def _create(self, video_dim: int, gaze_dim: int, dtype: str, chunk_steps: int) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        self._group = zarr.open_group(self._tmp, mode="w", zarr_format=3)
        self._group.attrs.update({"schema": "gazenlq.feature-store", "complete": False})
        # each feature axis its own name: xarray.open_zarr maps one name to one size
        specs = {VIDEO: ((video_dim,), dtype, ("time", f"{VIDEO}_channel"), np.nan),
                 GAZE_INPUT: ((gaze_dim,), dtype, ("time", f"{GAZE_INPUT}_channel"), np.nan)}
        if self.with_gaze_maps:
            specs[GAZE_MAPS] = ((MAP_SIZE, MAP_SIZE), dtype, ("time", "y", "x"), np.nan)
            specs[GAZE_TYPE] = ((), "uint8", ("time",), _GAZE_TYPE_FILL)
        self._arrays = {
            name: self._group.create_array(
                name, shape=(0, *tail), dtype=dt, chunks=(chunk_steps, *tail),
                compressors=BloscCodec(**COMPRESSOR), fill_value=fill, dimension_names=dims,
                config={"write_empty_chunks": True})
            for name, (tail, dt, dims, fill) in specs.items()
        }
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self._arrays}
        self._pending_rows = 0

    def append(self, video: np.ndarray, gaze: np.ndarray, gaze_maps: np.ndarray | None = None,
               gaze_type: np.ndarray | None = None) -> None:
        """Append ``n`` steps: ``video [n, Dv]``, ``gaze [n, Dg]`` and, if the store has
        gaze, ``gaze_maps [n, 64, 64]`` and ``gaze_type [n]``."""
        if self._done:
            raise StoreError(f"{self.path}: writer already finished")
        rows = {VIDEO: video, GAZE_INPUT: gaze}
        if self.with_gaze_maps:
            if gaze_maps is None or gaze_type is None:
                raise StoreError(f"{self.path}: this store has gaze maps; pass gaze_maps "
                                 "and gaze_type with every append")
            rows[GAZE_MAPS], rows[GAZE_TYPE] = gaze_maps, gaze_type
        elif gaze_maps is not None or gaze_type is not None:
            raise StoreError(f"{self.path}: store created without gaze maps")
        n = len(video)
        for name, data in rows.items():
            arr = self._arrays[name]
            data = np.asarray(data)
            if data.shape != (n, *arr.shape[1:]):
                raise StoreError(f"{self.path}: {name} block has shape {data.shape}, expected "
                                 f"{(n, *arr.shape[1:])}")
            if data.dtype.kind == "f" and not np.isfinite(data).all():
                raise StoreError(f"{self.path}: {name} block at steps {self.num_steps}-"
                                 f"{self.num_steps + n} contains NaN or inf")
            if name == GAZE_TYPE and (data.max(initial=0) > max(GazeType)):
                raise StoreError(f"{self.path}: {name} has codes outside GazeType")
            self._pending[name].append(data.astype(arr.dtype, copy=False))
        self.num_steps += n
        self._pending_rows += n
        if self._pending_rows >= self.chunk_steps:
            with self._writing():
                self._flush(whole_chunks_only=True)

    def _flush(self, whole_chunks_only: bool) -> None:
        """Write pending rows; whole chunks only while streaming, so no chunk is rewritten."""
        rows = self._pending_rows
        if whole_chunks_only:
            rows -= rows % self.chunk_steps
        if rows == 0:
            return
        for name, arr in self._arrays.items():
            block = np.concatenate(self._pending[name], axis=0)
            arr.append(block[:rows], axis=0)
            self._pending[name] = [block[rows:]] if rows < len(block) else []
        self._pending_rows -= rows

    def finish(self) -> Path:
        """Flush, mark complete and rename into place (atomic); on any failure (a full disk)
        the partial store is removed."""
        if self._done:
            return self.path
        with self._writing():
            return self._publish()

    def _publish(self) -> Path:
        self._flush(whole_chunks_only=False)
        grid = self.grid
        duration = self.duration_s
        if duration is None:
            duration = 0.0 if self.num_steps == 0 else (
                (grid.stride * (self.num_steps - 1) + grid.window) / grid.fps)
        info = StoreInfo(self.video_uid, grid, float(duration), self.num_steps,
                         self.sources[0], self.sources[1])
        attrs = info.to_attrs(complete=True)
        if self.extra_attrs:
            attrs["extra"] = self.extra_attrs
        self._group.attrs.update(attrs)
        self._done = True
        if self.path.exists():
            if not self.overwrite:
                raise StoreError(f"{self.path}: appeared while writing; not replaced")
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.path, old)
            os.rename(self._tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Discard everything written so far. Zarr writes chunks concurrently on its I/O
        loop: when one fails (a full disk), its siblings may still land after a first
        removal, so the partial store is removed until it stays gone (a bounded wait)."""
        self._done = True
        for _ in range(ABORT_TRIES):
            shutil.rmtree(self._tmp, ignore_errors=True)
            time.sleep(ABORT_SETTLE_S)
            if not self._tmp.exists():
                return

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()
