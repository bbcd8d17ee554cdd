"""Per-video cache of the query-independent embeddings, kept inside the feature store.

``<store>/cache/<key>/`` holds ``video_emb`` (and ``gaze_emb``) ``[windows, length, H]`` for
one bundle, window plan and step range. The key hashes the bundle's video graph, so a
cache written by another bundle is never read (it is removed when the new one is
published). A cache is written into a hidden temporary group and renamed into place, so
concurrent searches see a complete cache or none, never half of one, and a failed search
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr

from gazenlq.atomic import owner_alive

CACHE_GROUP = "cache"


def cache_key(video_graph_sha: str, precision: str, length: int, overlap: int, start: int,
              stop: int) -> str:
    blob = json.dumps([video_graph_sha, precision, length, overlap, start, stop])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class CachedEmbeddings:
    """A published cache: window ``i``'s embeddings on demand."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.video = group["video_emb"]
        self.gaze = group["gaze_emb"] if "gaze_emb" in set(group.array_keys()) else None

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.video[i], None if self.gaze is None else self.gaze[i]


def load(store: Path, key: str) -> CachedEmbeddings | None:
    """The cache ``key`` of ``store`` if it was published completely, else None."""
    path = store / CACHE_GROUP / key
    if not (path / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)
        if not group.attrs.get("complete"):
            return None
        return CachedEmbeddings(group)
    except Exception:  # a damaged cache is just a miss: it is rebuilt
        return None


class CacheWriter:
    """Writes one cache window by window; :meth:`publish` renames it into place."""

    def __init__(self, store: Path, key: str, windows: int, length: int, hidden: int,
                 with_gaze: bool, attrs: dict) -> None:
        self.root = store / CACHE_GROUP
        for stale in store.glob(".cache-tmp-*"):
            if not owner_alive(stale):
                shutil.rmtree(stale, ignore_errors=True)
        self.key = key
        # beside the store's arrays, hidden; nothing appears under cache/ until published
        self.tmp = store / f".cache-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.group = zarr.open_group(self.tmp, mode="w", zarr_format=3)
        self.attrs = {**attrs, "complete": False}
        self.group.attrs.update(self.attrs)
        shape, chunks = (windows, length, hidden), (1, length, hidden)
        self.arrays = {"video_emb": self.group.create_array(
            "video_emb", shape=shape, chunks=chunks, dtype="float32",
            config={"write_empty_chunks": True})}
        if with_gaze:
            self.arrays["gaze_emb"] = self.group.create_array(
                "gaze_emb", shape=shape, chunks=chunks, dtype="float32",
                config={"write_empty_chunks": True})

    def write(self, i: int, video_emb: np.ndarray, gaze_emb: np.ndarray | None) -> None:
        self.arrays["video_emb"][i] = video_emb
        if gaze_emb is not None:
            self.arrays["gaze_emb"][i] = gaze_emb

    def publish(self) -> None:
        """Mark complete and rename into place; drop caches of other bundles for the same
        window plan; if another process published first, keep theirs."""
        self.group.attrs.update({**self.attrs, "complete": True})
        zarr.open_group(self.root, mode="a", zarr_format=3)
        target = self.root / self.key
        try:
            os.rename(self.tmp, target)
        except OSError:  # published concurrently by someone else
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        plan = {k: self.attrs[k] for k in ("length", "overlap", "start", "stop")}
        for other in self.root.iterdir():
            if other.name == self.key or other.name.startswith(".") or not other.is_dir():
                continue
            meta = other / "zarr.json"
            try:
                attrs = json.loads(meta.read_text()).get("attributes", {})
            except (OSError, ValueError):
                continue
            if {k: attrs.get(k) for k in plan} == plan:
                shutil.rmtree(other, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
