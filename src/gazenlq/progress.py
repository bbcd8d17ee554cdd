"""Progress bars for long work: on stderr, and only when stderr is a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "",
             unit: str = "it", quiet: bool = False) -> Iterable[T]:
    """A tqdm bar on stderr, shown only when stderr is a terminal and not ``quiet``."""
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty() or os.environ.get("GAZENLQ_NO_PROGRESS") == "1"
    return tqdm(items, total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                dynamic_ncols=True, leave=False)
