"""Stores addressed by URL (``s3://bucket/video.zarr``): opened through Zarr's own store
abstraction (``zarr.storage.FsspecStore``), read-only.

Plain paths and ``file://`` URLs stay local paths; any other ``scheme://`` is handed to
fsspec, whose protocol package (``s3fs`` for ``s3://``: the ``gazenlq[s3]`` extra) is
imported only then. Credentials, region and endpoint come from that client library's usual
environment variables and config files (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL``, ``~/.aws/config``), never from gazenlq's own options.
"""

from __future__ import annotations

import os
from pathlib import Path

from gazenlq.errors import MissingDependencyError, StoreError

Location = Path | str
"""Where a store lives: a local directory, or the URL of a remote one."""

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}


def is_url(target: object) -> bool:
    """Whether ``target`` is a remote URL (``scheme://...``; ``file://`` is local)."""
    return isinstance(target, str) and "://" in target and not target.startswith("file://")


def location(target: str | os.PathLike) -> Location:
    """``target`` as a :data:`Location`: a remote URL as a string (without a trailing
    slash), anything else (``file://`` URLs included) as a local :class:`Path`."""
    if is_url(target):
        return str(target).rstrip("/")
    text = os.fspath(target)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(root: Location, name: str) -> Location:
    """``root/name`` for a directory or a URL prefix."""
    return f"{root}/{name}" if isinstance(root, str) else root / name


def filesystem(url: str):
    """The fsspec filesystem of ``url`` (its protocol package imported now)."""
    scheme = url.split("://", 1)[0]
    try:
        import fsspec

        return fsspec.filesystem(scheme)
    except ImportError as exc:
        extra = EXTRAS.get(scheme, "s3")
        raise MissingDependencyError(f"{url}: reading {scheme}:// stores needs "
                                     f"{exc.name or 'fsspec'}; install gazenlq[{extra}]"
                                     ) from None
    except ValueError as exc:  # unknown protocol
        raise StoreError(f"{url}: {exc}") from None


def open_group(url: str):
    """The Zarr v3 group at ``url``, read-only; a missing store is one line naming it."""
    import zarr
    from zarr.storage import FsspecStore

    fs = filesystem(url)
    try:
        present = fs.exists(f"{url}/zarr.json")
    except Exception as exc:  # network, permissions: the client's own words
        raise StoreError(f"{url}: cannot reach the store ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    if not present:
        raise StoreError(f"{url}: no such feature store (no zarr.json at this URL)")
    try:
        store = FsspecStore.from_url(url, read_only=True)
        return zarr.open_group(store, mode="r", zarr_format=3, use_consolidated=False)
    except Exception as exc:
        raise StoreError(f"{url}: cannot open as a Zarr v3 group ({exc})") from None


def list_stores(url: str, suffix: str) -> list[str]:
    """``url`` itself when it names a store (its suffix), else the stores (``*suffix``)
    directly under the prefix ``url``, sorted."""
    if url.endswith(suffix):
        return [url]
    fs = filesystem(url)
    scheme = url.split("://", 1)[0]
    try:
        names = fs.ls(url, detail=False)
    except FileNotFoundError:
        raise StoreError(f"{url}: no such feature store or prefix of stores") from None
    found = sorted(f"{scheme}://{n.split('://', 1)[-1]}" for n in names
                   if n.rstrip("/").endswith(suffix))
    if not found:
        raise StoreError(f"{url}: no feature stores (*{suffix}) under this prefix")
    return found
