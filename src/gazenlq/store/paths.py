"""Where stores live: the one ``<video_uid>.zarr`` naming rule and library discovery, for
local directories and URL prefixes alike (``store.remote``)."""

from __future__ import annotations

import os

from gazenlq.errors import StoreError
from gazenlq.store import remote
from gazenlq.store.remote import Location

SUFFIX = ".zarr"


def store_path(root: str | os.PathLike, video_uid: str) -> Location:
    """The store of ``video_uid`` in the directory (or URL prefix) ``root``:
    ``root/<video_uid>.zarr``."""
    return remote.join(remote.location(root), f"{video_uid}{SUFFIX}")


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a store (by its suffix or its Zarr root metadata)."""
    if remote.is_url(path):
        return str(path).rstrip("/").endswith(SUFFIX)
    path = remote.location(path)
    return path.suffix == SUFFIX or (path / "zarr.json").is_file()


def find_stores(target: str | os.PathLike) -> list[Location]:
    """``target`` itself when it is a store, else the stores (``*.zarr``) directly inside the
    directory (or under the URL prefix) ``target``, sorted: a library searched as one."""
    target = remote.location(target)
    if isinstance(target, str):
        return list(remote.list_stores(target, SUFFIX))
    if is_store(target):
        return [target]
    if not target.is_dir():
        raise StoreError(f"{target}: no such feature store or directory of stores")
    found = sorted(p for p in target.glob(f"*{SUFFIX}") if p.is_dir())
    if not found:
        raise StoreError(f"{target}: no feature stores (*{SUFFIX}) in this directory")
    return found
