"""Reading a feature store: checked metadata, checked reads, prefetched overlapping windows."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from gazenlq.errors import StoreError
from gazenlq.store import remote
from gazenlq.store.remote import Location
from gazenlq.store.schema import (
    FEATURE_ARRAYS,
    GAZE_ARRAYS,
    GAZE_INPUT,
    GAZE_MAPS,
    GAZE_TYPE,
    MAP_SIZE,
    VIDEO,
    GazeType,
    StoreInfo,
)


def plan_windows(num_steps: int, length: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open windows ``[start, stop)`` of ``length`` steps covering ``[0, num_steps)``.

    Windows start every ``length - overlap`` steps; the last one is shifted back to end at
    ``num_steps`` (so it may overlap its predecessor by more than ``overlap``). A video
    shorter than ``length`` is one window of its own length; an empty video has none.
    """
    if length <= 0 or not 0 <= overlap < length:
        raise ValueError(f"need length > 0 and 0 <= overlap < length, got {length}, {overlap}")
    if num_steps <= length:
        return [(0, num_steps)] if num_steps > 0 else []
    hop = length - overlap
    starts = [*range(0, num_steps - length, hop), num_steps - length]
    return [(s, s + length) for s in starts]


@dataclass(frozen=True)
class Window:
    """Steps ``[start, stop)`` of some arrays of one store."""

    start: int
    stop: int
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return self.stop - self.start


_END = object()


class FeatureStore:
    """One video's feature store, opened read-only with its metadata checked."""

    def __init__(self, path: Location, group: zarr.Group, info: StoreInfo) -> None:
        self.path = path
        self.group = group
        self.info = info

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open and check attributes, array presence, dtypes and shapes (no data is read).
        ``path``: a directory, or a URL (``s3://bucket/video.zarr``, see ``store.remote``)."""
        path = remote.location(path)
        if isinstance(path, str):
            group = remote.open_group(path)
        elif not path.is_dir():
            raise StoreError(f"{path}: no such feature store (expected a directory NAME.zarr)")
        elif not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a Zarr v3 group (no zarr.json)")
        else:
            try:
                group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)
            except Exception as exc:  # zarr raises many types for damaged metadata
                raise StoreError(f"{path}: cannot open as a Zarr v3 group ({exc})") from None
        info = StoreInfo.from_attrs(dict(group.attrs), str(path))
        store = cls(path, group, info)
        store._check_arrays()
        return store

    def _check_arrays(self) -> None:
        t = self.info.num_steps
        present = set(self.group.array_keys())
        for name in FEATURE_ARRAYS:
            if name not in present:
                raise StoreError(f"{self.path}: missing array {name!r}")
        gaze = [n for n in GAZE_ARRAYS if n in present]
        if len(gaze) == 1:
            raise StoreError(f"{self.path}: has {gaze[0]!r} without its partner "
                             f"({' and '.join(GAZE_ARRAYS)} come together)")
        expected = {VIDEO: (2, "f"), GAZE_INPUT: (2, "f"), GAZE_MAPS: (3, "f"),
                    GAZE_TYPE: (1, "u")}
        for name in (*FEATURE_ARRAYS, *gaze):
            arr = self.group[name]
            ndim, kind = expected[name]
            if arr.ndim != ndim or arr.shape[0] != t:
                raise StoreError(f"{self.path}: array {name!r} has shape {arr.shape}, expected "
                                 f"{ndim} dims with {t} steps first")
            if np.dtype(arr.dtype).kind != kind or (kind == "f" and arr.dtype.itemsize > 4):
                raise StoreError(f"{self.path}: array {name!r} has dtype {arr.dtype}, expected "
                                 + ("float16 or float32" if kind == "f" else "uint8"))
            if name == GAZE_MAPS and arr.shape[1:] != (MAP_SIZE, MAP_SIZE):
                raise StoreError(f"{self.path}: array {name!r} maps are {arr.shape[1:]}, "
                                 f"expected ({MAP_SIZE}, {MAP_SIZE})")
            if name == GAZE_TYPE and arr.dtype != np.uint8:
                raise StoreError(f"{self.path}: array {name!r} has dtype {arr.dtype}, "
                                 "expected uint8")

    @property
    def num_steps(self) -> int:
        return self.info.num_steps

    @property
    def has_gaze_maps(self) -> bool:
        return GAZE_MAPS in set(self.group.array_keys())

    def dim(self, name: str) -> int:
        """Feature width of a 2-D feature array."""
        return int(self.group[name].shape[1])

    @property
    def chunk_steps(self) -> int:
        return int(self.group[VIDEO].chunks[0])

    @property
    def extra(self) -> dict:
        """Free-form attributes of the producer (e.g. EgoSim's generation parameters)."""
        return dict(self.group.attrs.get("extra", {}))

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Steps ``[start, stop)`` of array ``name``; damaged or missing data raises StoreError."""
        if name not in set(self.group.array_keys()):
            raise StoreError(f"{self.path}: missing array {name!r}")
        stop = self.num_steps if stop is None else stop
        try:
            data = self.group[name][start:stop]
        except Exception as exc:  # codec errors have no common base class
            raise StoreError(f"{self.path}: array {name!r} steps {start}-{stop} cannot be read "
                             f"(corrupted or truncated chunk: {type(exc).__name__})") from None
        if data.dtype.kind == "f":
            bad = ~np.isfinite(data.reshape(len(data), -1)).all(axis=1)
        else:
            bad = data > max(GazeType)
        if bad.any():
            step = start + int(np.argmax(bad))
            raise StoreError(f"{self.path}: array {name!r} has invalid values at step {step} "
                             "(NaN/inf or a missing chunk)")
        return data

    def gaze_valid(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Per-step validity of the gaze maps: tracked (not :attr:`GazeType.UNTRACKED`)."""
        return self.read(GAZE_TYPE, start, stop) != GazeType.UNTRACKED

    def windows(self, length: int, overlap: int, arrays: Sequence[str] = FEATURE_ARRAYS,
                prefetch: int = 2, dtype: np.dtype | str | None = None, *, start: int = 0,
                stop: int | None = None) -> Iterator[Window]:
        """Yield the :func:`plan_windows` windows of steps ``[start, stop)`` (default: all;
        window bounds are absolute steps), read ahead by a background thread.

        The thread reads each chunk once (chunk-aligned, sequential) while the caller
        computes on the previous window; at most ``length`` + one chunk of steps per array
        and ``prefetch`` windows are held in memory, whatever the video's length.
        """
        stop = self.num_steps if stop is None else stop
        if not 0 <= start <= stop <= self.num_steps:
            raise StoreError(f"{self.path}: steps [{start}, {stop}) outside [0, "
                             f"{self.num_steps})")
        plan = [(start + s, start + e) for s, e in plan_windows(stop - start, length, overlap)]
        chunk = self.chunk_steps
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop_event = threading.Event()

        def put(item: object) -> bool:
            while not stop_event.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                buf_start, buf_stop = start, start
                bufs = {name: None for name in arrays}
                for s, e in plan:
                    if e > buf_stop:
                        read_stop = min(self.num_steps, -(-e // chunk) * chunk)
                        read_start = max(buf_stop, s)
                        for name in arrays:
                            new = self.read(name, read_start, read_stop)
                            if dtype is not None:
                                new = new.astype(dtype, copy=False)
                            old = bufs[name]
                            keep = None if old is None or buf_stop <= s else old[s - buf_start:]
                            bufs[name] = new if keep is None else np.concatenate([keep, new])
                        buf_start, buf_stop = s, read_stop
                    win = {n: b[s - buf_start:e - buf_start] for n, b in bufs.items()}
                    if not put(Window(s, e, win)):
                        return
                put(_END)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)

        thread = threading.Thread(target=produce, name="gazenlq-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop_event.set()
            thread.join(timeout=5)
