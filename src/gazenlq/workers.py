"""Worker processes (``--jobs N``) that never outlive the command that started them.

Every pool of the package comes from :func:`process_pool`: spawned processes (torch and
Numba are not fork-safe) that ignore Ctrl-C - the parent alone handles it, so one
interrupt is one line, not a traceback per worker - and exit as soon as their parent is
gone (killed, or crashed), instead of training or writing on for minutes unseen.
:func:`stop` ends a pool's workers at once after an error or an interrupt.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

PARENT_POLL_S = 0.5
"""How often a worker checks that its parent still runs."""


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)  # the parent is gone: nobody would read this worker's results


def _start(initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """Initializer of every worker: ignore SIGINT, watch the parent, then ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True,
                     name="gazenlq-parent-watch").start()
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that end with their parent."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start,
                               initargs=(initializer, initargs))


def stop(pool: ProcessPoolExecutor) -> None:
    """Cancel pending work and terminate the workers now (their unfinished outputs are
    hidden temporaries that the next run removes)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


@contextmanager
def stopped_on_error(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """Within the block, an error or Ctrl-C in the parent stops the workers at once (a
    pool's own exit would wait for every running job)."""
    try:
        yield pool
    except BaseException:
        stop(pool)
        raise
