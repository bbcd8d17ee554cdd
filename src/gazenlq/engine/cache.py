"""Per-video cache of the query-independent embeddings (the search index), kept in the store.

``<store>/cache/<key>/`` holds, for one bundle, window plan and step range, one array per
output of the per-video graph - ``video_emb`` (and ``gaze_emb``) ``[windows, length, H]``
float32, and for bundles with a coarse stage ``coarse_emb`` ``[windows, spans, D]``
float16 - as ``.npy`` files that searches memory-map (a coarse-to-fine query reads a few
slices of a few windows: microseconds, where a chunked read costs a millisecond), and the
plan as the attributes of a Zarr group's ``zarr.json`` (so that Zarr, listing the store,
sees the cache directories as groups of its hierarchy). The key hashes the bundle's video
graph, the device (backend) and the precision that computed it, so a cache written by
another bundle, backend or precision is never read (it is removed
when the new one is published). A cache is written into a hidden temporary directory and
renamed into place, so concurrent searches see a complete cache or none, never half of one,
and a failed search leaves nothing behind.

A store addressed by URL (``s3://...``) is never written to (a bucket may well be
read-only, and a memory-mapped index must be local): its index lives in the local index
directory, ``$GAZENLQ_INDEX_DIR`` or the user's cache directory (``index_home``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from gazenlq.atomic import owner_alive, write_json_atomic
from gazenlq.store.remote import Location

CACHE_DIR = "cache"
META = "zarr.json"
FORMAT = "gazenlq.index"
VERSION = 2
ARRAYS = {"video_emb": np.float32, "gaze_emb": np.float32, "coarse_emb": np.float16}


def cache_key(producer: tuple[str, str, str], length: int, overlap: int, start: int,
              stop: int, shapes: dict[str, tuple[int, ...]]) -> str:
    """The index computed by ``producer`` - (sha256 of the video graph, device, precision):
    fp16 TensorRT embeddings are not fp32 CPU ones - for one window plan and step range,
    holding the arrays ``shapes`` (name -> per-window shape)."""
    blob = json.dumps([*producer, length, overlap, start, stop,
                       sorted((k, list(v)) for k, v in shapes.items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def index_home(store: Location) -> Path:
    """Where the index of ``store`` lives: the store itself when local, else
    ``<index dir>/<name>-<hash of the URL>/`` (see the module's doc)."""
    if isinstance(store, Path):
        return store
    root = os.environ.get("GAZENLQ_INDEX_DIR")
    if not root:
        from platformdirs import user_cache_dir

        root = os.path.join(user_cache_dir("gazenlq"), "index")
    digest = hashlib.sha256(store.encode()).hexdigest()[:16]
    return Path(root) / f"{store.rsplit('/', 1)[-1]}-{digest}"


class CachedEmbeddings:
    """A published cache: its arrays memory-mapped (read-only), its plan in ``meta``."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.meta = path, meta
        self.arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r")
                       for name in meta["arrays"]}
        self.video = self.arrays["video_emb"]
        self.gaze = self.arrays.get("gaze_emb")
        self.coarse = self.arrays.get("coarse_emb")


def load(store: Location, key: str) -> CachedEmbeddings | None:
    """The cache ``key`` of ``store`` if it was published completely, else None."""
    path = index_home(store) / CACHE_DIR / key
    try:
        meta = _attributes(path)
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            return None
        return CachedEmbeddings(path, meta)
    except (OSError, ValueError, KeyError):  # absent or damaged: a miss, rebuilt
        return None


class CacheWriter:
    """Writes one cache window by window; :meth:`publish` renames it into place."""

    def __init__(self, store: Location, key: str, windows: int,
                 shapes: dict[str, tuple[int, ...]], plan: dict) -> None:
        """``shapes``: each array's per-window shape (names from :data:`ARRAYS`)."""
        store = index_home(store)
        store.mkdir(parents=True, exist_ok=True)
        self.root = store / CACHE_DIR
        for stale in store.glob(".cache-tmp-*"):
            if not owner_alive(stale):
                shutil.rmtree(stale, ignore_errors=True)
        self.key, self.plan = key, plan
        # beside the store's arrays, hidden; nothing appears under cache/ until published
        self.tmp = store / f".cache-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        _write_group(self.tmp, {"complete": False})
        self.arrays = {name: np.lib.format.open_memmap(
            self.tmp / f"{name}.npy", mode="w+", dtype=ARRAYS[name], shape=(windows, *shape))
            for name, shape in shapes.items()}

    def write(self, i: int, outputs: dict[str, np.ndarray]) -> None:
        """Window ``i`` of every cached array, from the per-video graph's ``outputs``."""
        for name, array in self.arrays.items():
            array[i] = outputs[name]

    def publish(self) -> None:
        """Flush, write ``meta.json`` and rename into place; drop caches of other bundles
        for the same window plan; if another process published first, keep theirs."""
        for array in self.arrays.values():
            array.flush()
        self.arrays.clear()
        _write_group(self.tmp, {"format": FORMAT, "version": VERSION,
                                "arrays": sorted(ARRAYS.keys() & {
                                    p.stem for p in self.tmp.glob("*.npy")}), **self.plan})
        if not (self.root / META).is_file():
            self.root.mkdir(exist_ok=True)
            _write_group(self.root, {})
        target = self.root / self.key
        try:
            os.rename(self.tmp, target)
        except OSError:  # published concurrently by someone else
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        plan = {k: self.plan[k] for k in ("length", "overlap", "start", "stop")}
        for other in self.root.iterdir():
            if other.name == self.key or other.name.startswith(".") or not other.is_dir():
                continue
            try:
                meta = _attributes(other)
            except (OSError, ValueError):
                meta = {}  # damaged: replaced as well
            if {k: meta.get(k) for k in plan} == plan or meta.get("format") != FORMAT:
                shutil.rmtree(other, ignore_errors=True)

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_group(path: Path, attributes: dict) -> None:
    write_json_atomic(path / META, {"zarr_format": 3, "node_type": "group",
                                    "attributes": attributes}, indent=1)


def _attributes(path: Path) -> dict:
    return json.loads((path / META).read_text()).get("attributes", {})
