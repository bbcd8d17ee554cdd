"""Atomic writes: files via a temporary sibling + ``os.replace``, directories by rename.

Readers never see a half-written annotation file, checkpoint or bundle; an interrupted
write leaves only a hidden temporary that the next write of the same target removes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None
                      ) -> None:
    """Write ``obj`` as JSON through a temporary file and ``os.replace``."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, allow_nan=False, indent=indent)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _name(exc, target)
        raise


def _name(exc: BaseException, target: Path) -> None:
    """An operating-system error without a file name (a full disk in a library's write)
    names the target, so that the one-line error says where."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(target)


def owner_alive(temp: Path) -> bool:
    """Whether the process that owns a temporary ``.NAME.<kind>-PID-RANDOM`` still runs.

    Cleaning up leftovers must never pull a live writer's data from under it (for example
    two processes generating the same dataset); a temporary of this very process counts
    as a leftover.
    """
    try:
        pid = int(temp.name.rsplit("-", 2)[-2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temporary directory that replaces ``path`` when the block succeeds.

    An existing ``path`` is swapped out by rename and then deleted; on error the temporary
    is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if not owner_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _name(exc, target)
        raise
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
