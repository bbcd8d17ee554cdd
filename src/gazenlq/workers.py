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


GRACE_S = 10.0
"""How long a worker stopped by SIGTERM may take to unwind before it is ended outright."""


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    # the parent is gone: nobody would read this worker's results; unwind (so writers
    # remove their temporaries), and if that hangs, end outright
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def _unwind(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _start(parent: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    """Initializer of every worker: ignore SIGINT, watch the parent (``parent``: its pid,
    taken before the spawn, so a parent killed while the worker started is noticed too),
    then ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _unwind)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="gazenlq-parent-watch").start()
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that end with their parent."""
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start,
                               initargs=(os.getpid(), initializer, initargs))


def stop(pool: ProcessPoolExecutor) -> None:
    """Cancel pending work and stop the workers now: SIGTERM unwinds each one (its writers
    remove their temporaries); one that does not end within :data:`GRACE_S` is killed."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()


@contextmanager
def stopped_on_error(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """Within the block, an error or Ctrl-C in the parent stops the workers at once (a
    pool's own exit would wait for every running job)."""
    try:
        yield pool
    except BaseException:
        stop(pool)
        raise
