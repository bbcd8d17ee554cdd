"""Reading a feature store: checked metadata, checked reads, prefetched overlapping windows.

A local store's metadata is read from its Zarr v3 documents (``zarr.json``) directly; Zarr
itself is imported only when features are read. A search whose index is present reads no
features, so it never pays Zarr's import (a fifth of a cold start)."""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class ArrayMeta:
    """What a store's array is, from its metadata: shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _document(path: Path, what: str) -> dict[str, Any]:
    """One Zarr v3 metadata document, checked to be a v3 ``what`` (group or array)."""
    try:
        doc = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot open as a Zarr v3 {what} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
        raise StoreError(f"{path}: cannot open as a Zarr v3 {what} (zarr.json is not Zarr "
                         "format 3 metadata)")
    return doc


def _array_meta(path: Path, doc: dict[str, Any]) -> ArrayMeta:
    """Shape and dtype of the array document ``doc`` (core data types only, as Zarr's)."""
    try:
        shape = tuple(int(n) for n in doc["shape"])
        dtype = np.dtype(doc["data_type"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{path}: cannot open as a Zarr v3 array (bad shape or data_type: "
                         f"{exc})") from None
    if any(n < 0 for n in shape):
        raise StoreError(f"{path}: cannot open as a Zarr v3 array (negative shape {shape})")
    return ArrayMeta(shape, dtype)


def _local_metadata(path: Path) -> tuple[dict[str, Any], dict[str, ArrayMeta]]:
    """The group attributes and the arrays of the local Zarr v3 group ``path``, from its
    metadata documents (the group's and each child's ``zarr.json``)."""
    doc = _document(path, "group")
    if doc.get("node_type") != "group":
        raise StoreError(f"{path}: cannot open as a Zarr v3 group (its zarr.json describes "
                         f"a {doc.get('node_type')!r} node)")
    arrays = {}
    for child in sorted(path.iterdir()):
        if (child / "zarr.json").is_file():
            sub = _document(child, "array")
            if sub.get("node_type") == "array":
                arrays[child.name] = _array_meta(child, sub)
    attrs = doc.get("attributes", {})
    return (attrs if isinstance(attrs, dict) else {}), arrays


class FeatureStore:
    """One video's feature store, opened read-only with its metadata checked."""

    def __init__(self, path: Location, info: StoreInfo, arrays: dict[str, ArrayMeta],
                 attrs: dict[str, Any], group: Any = None) -> None:
        self.path = path
        self.info = info
        self.arrays = arrays
        """Every array of the store by name: its shape and dtype."""
        self._attrs = attrs
        self._group = group

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open and check attributes, array presence, dtypes and shapes (no data is read).
        ``path``: a directory, or a URL (``s3://bucket/video.zarr``, see ``store.remote``)."""
        path = remote.location(path)
        group = None
        if isinstance(path, str):
            group = remote.open_group(path)
            attrs = dict(group.attrs)
            arrays = {name: ArrayMeta(tuple(a.shape), np.dtype(a.dtype))
                      for name, a in group.arrays()}
        elif not path.is_dir():
            raise StoreError(f"{path}: no such feature store (expected a directory NAME.zarr)")
        elif not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a Zarr v3 group (no zarr.json)")
        else:
            attrs, arrays = _local_metadata(path)
        store = cls(path, StoreInfo.from_attrs(attrs, str(path)), arrays, attrs, group)
        store._check_arrays()
        return store

    @property
    def group(self):
        """The store as a Zarr group (opened, and Zarr imported, on first use)."""
        if self._group is None:
            import zarr

            try:
                self._group = zarr.open_group(self.path, mode="r", zarr_format=3,
                                              use_consolidated=False)
            except Exception as exc:  # zarr raises many types for damaged metadata
                raise StoreError(f"{self.path}: cannot open as a Zarr v3 group ({exc})"
                                 ) from None
        return self._group

    def _check_arrays(self) -> None:
        t = self.info.num_steps
        present = set(self.arrays)
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
            arr = self.arrays[name]
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
        return GAZE_MAPS in self.arrays

    def dim(self, name: str) -> int:
        """Feature width of a 2-D feature array."""
        return int(self.arrays[name].shape[1])

    @property
    def chunk_steps(self) -> int:
        return int(self.group[VIDEO].chunks[0])

    @property
    def extra(self) -> dict:
        """Free-form attributes of the producer (e.g. EgoSim's generation parameters)."""
        return dict(self._attrs.get("extra", {}))

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Steps ``[start, stop)`` of array ``name``; damaged or missing data raises StoreError."""
        if name not in self.arrays:
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
