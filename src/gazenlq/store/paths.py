"""Where stores live: the one ``<video_uid>.zarr`` naming rule and library discovery."""

from __future__ import annotations

import os
from pathlib import Path

from gazenlq.errors import StoreError

SUFFIX = ".zarr"


def store_path(root: str | os.PathLike, video_uid: str) -> Path:
    """The store of ``video_uid`` in the directory ``root``: ``root/<video_uid>.zarr``."""
    return Path(root) / f"{video_uid}{SUFFIX}"


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a store (by its suffix or its Zarr root metadata)."""
    path = Path(path)
    return path.suffix == SUFFIX or (path / "zarr.json").is_file()


def find_stores(target: str | os.PathLike) -> list[Path]:
    """``target`` itself when it is a store, else the stores (``*.zarr``) directly inside the
    directory ``target``, sorted: a library searched as one."""
    target = Path(target)
    if is_store(target):
        return [target]
    if not target.is_dir():
        raise StoreError(f"{target}: no such feature store or directory of stores")
    found = sorted(p for p in target.glob(f"*{SUFFIX}") if p.is_dir())
    if not found:
        raise StoreError(f"{target}: no feature stores (*{SUFFIX}) in this directory")
    return found
