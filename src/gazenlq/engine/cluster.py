"""Indexing a library on a Dask cluster (the ``gazenlq[cluster]`` extra).

Each store is one task that runs the single-process path, :meth:`SearchEngine.index`, on a
worker; each worker process keeps one engine (one set of ONNX Runtime sessions) per bundle
and options for all its tasks. At most ``in_flight`` tasks are submitted at a time, so a
library of ten thousand stores is never ten thousand futures. Each index is published
atomically where ``engine.cache.cache_root`` puts it (inside a local store, else under the
options' ``cache_dir``, ``$GAZENLQ_CACHE_DIR`` or the user's cache directory: a directory
every worker and searcher must share), as in a single process, so a worker killed
mid-store leaves only a hidden temporary (removed by the next writer of that store) and
the scheduler runs the task again elsewhere; a job re-run skips the stores whose index is
published. Dask is imported only here, only when asked for.

``scheduler``: ``local:N`` starts a ``LocalCluster`` of N single-threaded worker processes
bound to 127.0.0.1 (no dashboard); anything else is a scheduler address
(``tcp://host:8786``) of a cluster started elsewhere - ``dask scheduler`` + ``dask worker``,
dask-jobqueue on SLURM/PBS, dask-kubernetes - whose workers see the bundle and the stores
at the same paths or URLs.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from gazenlq.engine.options import SearchOptions
from gazenlq.engine.runtime import RuntimeOptions
from gazenlq.errors import MissingDependencyError, ParameterError
from gazenlq.store.remote import Location

_ENGINES: dict[tuple, object] = {}
"""Per worker process: the engine of each (bundle, runtime, options) its tasks used."""


@dataclass
class IndexReport:
    """What one distributed indexing job did."""

    indexed: list[str] = field(default_factory=list)
    """Stores whose index this job built."""
    present: list[str] = field(default_factory=list)
    """Stores whose index was already published (skipped)."""
    windows: int = 0
    """Windows the per-video graph ran on."""
    workers: int = 0
    seconds: float = 0.0


def _distributed():
    try:
        import distributed
    except ImportError:
        raise MissingDependencyError("--scheduler needs Dask distributed: pip install "
                                     "'gazenlq[cluster]'") from None
    return distributed


def local_workers(scheduler: str) -> int | None:
    """N of ``local:N``; None for a scheduler address."""
    if not scheduler.startswith("local:"):
        return None
    try:
        n = int(scheduler.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise ParameterError("scheduler", scheduler, "expected local:N with N >= 1 workers, "
                             "or a scheduler address such as tcp://host:8786")
    return n


@contextmanager
def connect(scheduler: str) -> Iterator[object]:
    """A ``distributed.Client`` of ``scheduler`` (``local:N`` or an address), closed after
    the block (a local cluster is shut down with it)."""
    distributed = _distributed()
    n = local_workers(scheduler)
    if n is None:
        with distributed.Client(scheduler, timeout="60s") as client:
            yield client
        return
    with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def worker_runtime(runtime: RuntimeOptions, scheduler: str) -> RuntimeOptions:
    """``runtime`` with, for ``local:N`` and no thread count given, an equal share of this
    machine's cores per worker (N sessions on all cores each would oversubscribe them)."""
    n = local_workers(scheduler)
    if n is None or runtime.threads is not None:
        return runtime
    return replace(runtime, threads=max(1, (os.cpu_count() or 1) // n))


def _engine(bundle: str, runtime: RuntimeOptions, options: SearchOptions):
    """This worker process's engine for ``bundle`` and the options (loaded once)."""
    from gazenlq.engine.search import SearchEngine

    key = (bundle, runtime, options)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = SearchEngine(bundle, runtime, options)
    return engine


def _index_store(bundle: str, runtime: RuntimeOptions, options: SearchOptions,
                 store: Location) -> tuple[str, int]:
    """The task: index one store with this worker's engine; ``(store, windows computed)``."""
    return str(store), _engine(bundle, runtime, options).index([store]).windows


def load_engines(client, bundle: str | os.PathLike, *,
                 runtime: RuntimeOptions = RuntimeOptions(),
                 options: SearchOptions = SearchOptions()) -> None:
    """Load the engine on every worker of ``client`` now: a bad bundle or a missing device
    fails once, before any store is handed out."""
    bundle = os.fspath(bundle)
    client.wait_for_workers(1, timeout=120)
    client.run(lambda: _engine(bundle, runtime, options) and None)


def index_library(client, bundle: str | os.PathLike, stores: Sequence[Location], *,
                  runtime: RuntimeOptions = RuntimeOptions(),
                  options: SearchOptions = SearchOptions(), in_flight: int | None = None,
                  on_store: Callable[[], object] | None = None) -> IndexReport:
    """Index ``stores`` on the workers of ``client`` (see the module's doc; the engines are
    loaded on every worker first); at most ``in_flight`` stores at a time (default: twice
    the workers). The first failing store's error is raised here (the remaining tasks are
    cancelled)."""
    distributed = _distributed()
    t0 = time.perf_counter()
    load_engines(client, bundle, runtime=runtime, options=options)
    workers = len(client.scheduler_info()["workers"])
    limit = in_flight or 2 * workers
    if limit < 1:
        raise ParameterError("in_flight", limit, "must be at least 1")
    bundle = os.fspath(bundle)
    job = uuid.uuid4().hex[:8]  # task keys of this job only (never another job's results)
    todo = iter(enumerate(stores))
    running = distributed.as_completed()
    report = IndexReport(workers=workers)

    def submit() -> None:
        item = next(todo, None)
        if item is not None:
            i, store = item
            running.add(client.submit(_index_store, bundle, runtime, options, store,
                                      key=f"gazenlq-index-{job}-{i}",
                                      pure=False))

    for _ in range(limit):
        submit()
    try:
        for future in running:
            name, windows = future.result()
            (report.indexed if windows else report.present).append(name)
            report.windows += windows
            if on_store is not None:
                on_store()
            submit()
    except BaseException:
        client.cancel(list(running.futures))
        raise
    report.seconds = time.perf_counter() - t0
    return report
