"""sha256 of bundle files, remembered across processes while a file is unchanged.

Hashing a bundle (about 100 MB, most of it the text encoder) costs a quarter of a second,
a good part of a search's cold start. The digest of each file is kept in the user's cache
directory beside the file's identity - device, inode, size, modification and change time
in nanoseconds - and reused while all of them are equal. The change time (ctime) is set by
the kernel on every write or metadata change and cannot be set back by a user, so a file
modified after it was hashed is hashed again. Without a writable cache directory every file
is simply hashed each time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from gazenlq.atomic import write_json_atomic

SETTLED_NS = 2_000_000_000
"""Files changed in the last 2 s are hashed every time (file times tick coarsely)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _memo_file() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("gazenlq", appauthor=False) / "sha256.json"


def identity(st: os.stat_result) -> list[int]:
    """A file's identity: device, inode, size, modification and change time (ns)."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class HashMemo:
    """Digests of files by path, valid while the file's identity is unchanged."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or _memo_file()
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        key = str(Path(file).resolve())
        ident = identity(os.stat(key))
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 2 and hit[0] == ident:
            return str(hit[1])
        digest = sha256_file(Path(key))
        # remembered only when not written to while it was read, and changed long enough
        # ago that a write in the same clock tick would have shown in the change time
        settled = time.time_ns() - ident[4] > SETTLED_NS
        if settled and identity(os.stat(key)) == ident:
            self.entries[key] = [ident, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        """Write the memo (atomically; a read-only cache directory is no error)."""
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            live = {k: v for k, v in self.entries.items() if os.path.exists(k)}
            write_json_atomic(self.path, live)
        except OSError:
            pass
        self.dirty = False
