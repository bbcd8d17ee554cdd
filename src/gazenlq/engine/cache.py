"""Per-video cache of the query-independent embeddings (the search index), kept in the store.

``<store>/cache/<key>/`` holds, for one bundle, window plan and step range, one array per
output of the per-video graph - ``video_emb`` (and ``gaze_emb``) ``[windows, length, H]``
float32, for bundles with a coarse stage ``coarse_emb`` ``[windows, spans, D]`` float16,
for bundles with a looked-at head ``looked_at_emb`` ``[windows, length, D]`` float16 -
as ``.npy`` files that searches memory-map (a coarse-to-fine query reads a few slices of a
few windows: microseconds, where a chunked read costs a millisecond), and the
plan as the attributes of a Zarr group's ``zarr.json`` (so that Zarr, listing the store,
sees the cache directories as groups of its hierarchy). The key hashes the bundle's video
graph, the device (backend) and the precision that computed it, so a cache written by
another bundle, backend or precision is never read (it is removed
when the new one is published). A cache is written into a hidden temporary directory and
renamed into place, so concurrent searches see a complete cache or none, never half of one,
and a failed search leaves nothing behind.

A cache is verified, never trusted blindly: the size and sha256 of every array are recorded
when it is published and checked when it is opened (once per file identity, remembered like
bundle files: ``bundle.hashes.HashMemo``); a missing, truncated or altered array makes the
cache a miss - it is removed, recomputed and published again, with one warning line.

Where the store cannot be written (a read-only mount), the index can live elsewhere:
``cache_dir`` (``--cache-dir``, ``$GAZENLQ_CACHE_DIR``) holds one directory per store, named
for the store and the identity of its metadata file (a store rewritten in place gets a new
one), or for a store addressed by URL the hash of its URL. Without it a local store that
cannot be written is searched without writing an index, with one warning line. A store
addressed by URL (``s3://...``) is never written to (a bucket may well be read-only, and a
memory-mapped index must be local): without ``cache_dir`` its index lives in the user's
cache directory (``<user cache dir>/gazenlq/index/<name>-<hash of the URL>/cache``).
Disk space for an index is reserved before it is written, so a full disk is one warning and
no partial file, never a crash in the middle of a memory-mapped write.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from gazenlq.atomic import owner_alive, write_json_atomic
from gazenlq.bundle.hashes import HashMemo, identity, sha256_file
from gazenlq.errors import StoreError, warn
from gazenlq.store.remote import Location, location

CACHE_DIR = "cache"
CACHE_ENV = "GAZENLQ_CACHE_DIR"
META = "zarr.json"
FORMAT = "gazenlq.index"
VERSION = 3
ARRAYS = {"video_emb": np.float32, "gaze_emb": np.float32, "coarse_emb": np.float16,
          "looked_at_emb": np.float16}


def cache_key(producer: tuple[str, str, str], length: int, overlap: int, start: int,
              stop: int, shapes: dict[str, tuple[int, ...]]) -> str:
    """The index computed by ``producer`` - (sha256 of the video graph, device, precision):
    fp16 TensorRT embeddings are not fp32 CPU ones - for one window plan and step range,
    holding the arrays ``shapes`` (name -> per-window shape)."""
    blob = json.dumps([*producer, length, overlap, start, stop,
                       sorted((k, list(v)) for k, v in shapes.items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_root(store: Location, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the caches of ``store`` live (see the module's doc). With ``cache_dir`` (else
    ``$GAZENLQ_CACHE_DIR``): ``<cache_dir>/<store name>-<identity>/cache``, the identity
    hashing a local store's resolved path and its metadata file's inode, size and mtime, or
    a remote store's URL. Without it: ``<store>/cache`` for a local store, the user's cache
    directory for a URL."""
    cache_dir = cache_dir or os.environ.get(CACHE_ENV) or None
    store = location(store)
    if isinstance(store, str):  # a URL
        url = store
        if cache_dir is None:
            from platformdirs import user_cache_dir

            cache_dir = os.path.join(user_cache_dir("gazenlq"), "index")
        ident = hashlib.sha256(url.encode()).hexdigest()
        return Path(cache_dir) / f"{url.rsplit('/', 1)[-1]}-{ident[:16]}" / CACHE_DIR
    if cache_dir is None:
        return store / CACHE_DIR
    try:
        st = (store / META).stat()
        stamp = [st.st_ino, st.st_size, st.st_mtime_ns]
    except OSError:
        stamp = []
    ident = hashlib.sha256(json.dumps([str(store.resolve()), stamp]).encode()).hexdigest()
    return Path(cache_dir) / f"{store.name}-{ident[:16]}" / CACHE_DIR


_memo: HashMemo | None = None


def _hashes() -> HashMemo:
    """The process's memo of verified array digests (loaded once)."""
    global _memo
    if _memo is None:
        _memo = HashMemo()
    return _memo


class CachedEmbeddings:
    """A published, verified cache: its arrays memory-mapped (read-only), its plan in
    ``meta``."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.meta = path, meta
        self.files = {name: path / f"{name}.npy" for name in meta["arrays"]}
        self.identities = {name: identity(f.stat()) for name, f in self.files.items()}
        self.arrays = {name: np.load(f, mmap_mode="r") for name, f in self.files.items()}
        self.video = self.arrays["video_emb"]
        self.gaze = self.arrays.get("gaze_emb")
        self.coarse = self.arrays.get("coarse_emb")

    def intact(self) -> bool:
        """Whether every array file is still the one verified (same identity)."""
        try:
            return all(identity(f.stat()) == self.identities[n] for n, f in self.files.items())
        except OSError:
            return False


def problem(path: Path) -> str | None:
    """What is wrong with the published cache ``path`` (None: complete and verified)."""
    try:
        meta = _attributes(path)
    except (OSError, ValueError) as exc:
        return f"{path / META}: unreadable ({type(exc).__name__})"
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return f"{path}: index format {meta.get('version')!r}, not {VERSION}"
    records = meta.get("files")
    if not isinstance(records, dict) or sorted(records) != sorted(meta.get("arrays", [])) \
            or "video_emb" not in records:
        return f"{path / META}: no checksum record for its arrays"
    memo = _hashes()
    for name, record in records.items():
        file = path / f"{name}.npy"
        try:
            if file.stat().st_size != record.get("bytes"):
                return f"{file}: {file.stat().st_size} bytes, {record.get('bytes')} recorded"
            if memo.sha256(file) != record.get("sha256"):
                return f"{file}: sha256 differs from the one recorded"
        except OSError:
            return f"{file}: missing"
    memo.save()
    return None


def load(root: Path, key: str) -> CachedEmbeddings | None:
    """The cache ``key`` under ``root`` (:func:`cache_root`) if it is published and intact,
    else None; a damaged one is removed (so that the search recomputes and republishes it)
    with one warning line."""
    path = root / key
    if not (path / META).is_file():
        return None
    found = problem(path)
    if found is None:
        try:
            return CachedEmbeddings(path, _attributes(path))
        except (OSError, ValueError, KeyError) as exc:
            found = f"{path}: unreadable ({type(exc).__name__})"
    if "index format" not in found:  # an older format is replaced silently
        warn(f"{found}; recomputing this index and repairing it")
    discard(path)
    return None


def check_caches(store: Location, cache_dir: str | os.PathLike | None = None) -> int:
    """Verify every published cache of ``store`` (sizes and sha256 against their records);
    raise :class:`StoreError` naming the first damaged file, else return how many were
    verified (caches of an older format, replaced by the next search, are not counted)."""
    root = cache_root(store, cache_dir)
    verified = 0
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith(".") or not path.is_dir():
            continue
        found = problem(path)
        if found is not None and "index format" not in found:
            raise StoreError(f"{found}; the next search recomputes this index")
        verified += found is None
    return verified


def discard(path: Path) -> None:
    """Remove a cache directory (renamed aside first, so no reader sees half of it); where
    it cannot be removed (read-only), it stays and keeps being recomputed."""
    aside = path.parent / f".{path.name}.bad-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def open_writer(root: Path, key: str, windows: int, shapes: dict[str, tuple[int, ...]],
                plan: dict) -> CacheWriter | None:
    """A writer of the cache ``key`` under ``root``, or None with one warning line where
    the location cannot be written (read-only, full): the search goes on without it."""
    try:
        return CacheWriter(root, key, windows, shapes, plan)
    except OSError as exc:
        _unwritable(root, exc)
        return None


_warned: set[tuple[Path, int | None]] = set()


def _unwritable(root: Path, exc: OSError) -> None:
    """One warning line per directory of stores (a read-only library is one line)."""
    where = (root.parent.parent, exc.errno)
    if where in _warned:
        return
    _warned.add(where)
    warn(f"{root}: index not written ({exc.strerror or exc}); searching without it "
         f"(--cache-dir DIR or ${CACHE_ENV} keeps it elsewhere; same for the other stores "
         f"of {root.parent.parent})")


class CacheWriter:
    """Writes one cache window by window; :meth:`publish` renames it into place. Raises
    ``OSError`` when the location cannot be written or the disk lacks the space (the
    arrays' space is reserved up front), leaving nothing behind."""

    def __init__(self, root: Path, key: str, windows: int, shapes: dict[str, tuple[int, ...]],
                 plan: dict) -> None:
        """``root``: :func:`cache_root`; ``shapes``: each array's per-window shape (names
        from :data:`ARRAYS`)."""
        self.root = Path(root)
        base = self.root.parent
        base.mkdir(parents=True, exist_ok=True)
        for stale in base.glob(f".{self.root.name}-tmp-*"):
            if not owner_alive(stale):
                shutil.rmtree(stale, ignore_errors=True)
        self.key, self.plan = key, plan
        # beside the store's arrays, hidden; nothing appears under cache/ until published
        self.tmp = base / f".{self.root.name}-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.arrays: dict[str, np.memmap] = {}
        try:
            _write_group(self.tmp, {"complete": False})
            for name, shape in shapes.items():
                file = self.tmp / f"{name}.npy"
                self.arrays[name] = np.lib.format.open_memmap(
                    file, mode="w+", dtype=ARRAYS[name], shape=(windows, *shape))
                _reserve(file)
        except BaseException:
            self.abort()
            raise

    def write(self, i: int, outputs: dict[str, np.ndarray]) -> None:
        """Window ``i`` of every cached array, from the per-video graph's ``outputs``."""
        for name, array in self.arrays.items():
            array[i] = outputs[name]

    def publish(self) -> None:
        """Flush, record every array's size and sha256 in ``zarr.json`` and rename into
        place; drop caches of other bundles for the same window plan; if another process
        published an intact one first, keep theirs. A write that fails (full disk) is one
        warning line and leaves nothing behind."""
        try:
            self._publish()
        except OSError as exc:
            self.abort()
            _unwritable(self.root, exc)

    def _publish(self) -> None:
        for array in self.arrays.values():
            array.flush()
        names = sorted(self.arrays)
        self.arrays.clear()
        files = {n: {"bytes": (self.tmp / f"{n}.npy").stat().st_size,
                     "sha256": sha256_file(self.tmp / f"{n}.npy")} for n in names}
        _write_group(self.tmp, {"format": FORMAT, "version": VERSION, "arrays": names,
                                "files": files, **self.plan})
        if not (self.root / META).is_file():
            self.root.mkdir(exist_ok=True)
            _write_group(self.root, {})
        target = self.root / self.key
        if target.exists():
            if problem(target) is None:  # published concurrently by someone else
                self.abort()
                return
            discard(target)
        try:
            os.rename(self.tmp, target)
        except OSError:  # published concurrently by someone else
            self.abort()
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


def _reserve(file: Path) -> None:
    """Allocate the blocks of ``file`` now: a full disk fails here with ENOSPC, not later
    as a bus error in a memory-mapped write (file systems without fallocate are left be)."""
    with open(file, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise


def can_index(root: Path, key: str) -> bool:
    """Whether the cache ``key`` under ``root`` is published or could be written there."""
    if (root / key / META).is_file():
        return True
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _write_group(path: Path, attributes: dict) -> None:
    write_json_atomic(path / META, {"zarr_format": 3, "node_type": "group",
                                    "attributes": attributes}, indent=1)


def _attributes(path: Path) -> dict:
    return json.loads((path / META).read_text()).get("attributes", {})
