"""Indexing on a Dask cluster started by the test (2 worker processes on 127.0.0.1): the
indexes are bit for bit those of the single-process path, a worker killed while writing
one is survived (its task runs again, nothing half-written is left), a re-run indexes only
what is missing, and without --scheduler nothing imports Dask."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gazenlq.engine import RuntimeOptions, SearchEngine
from tests.conftest import script

distributed = pytest.importorskip("distributed",
                                  reason="the cluster extra (gazenlq[cluster]) is not installed")


class KillFirstWriter(distributed.WorkerPlugin):
    """Makes the first worker that writes an index window (of any worker) die by SIGKILL
    right after that write, before the index is published."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def setup(self, worker) -> None:
        from gazenlq.engine import cache

        original, flag = cache.CacheWriter.write, self.flag

        def write(writer, i, outputs):
            original(writer, i, outputs)
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)

        cache.CacheWriter.write = write


def _library(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in sorted(src.glob("*.zarr")):
        shutil.copytree(p, dst / p.name, ignore=shutil.ignore_patterns("cache"))
    return dst


def _index_files(library: Path) -> dict[str, bytes]:
    return {str(p.relative_to(library)): p.read_bytes()
            for p in sorted(library.rglob("*")) if p.is_file() and "cache" in p.parts}


@pytest.mark.slow
def test_cluster_index_equals_single_process_and_survives_a_killed_worker(
        tiny_trained, tiny_bundle, tmp_path):
    from gazenlq.engine.cluster import connect, index_library

    data, _ = tiny_trained
    runtime = RuntimeOptions(threads=1)
    reference = _library(data.stores, tmp_path / "reference")
    SearchEngine(tiny_bundle, runtime).index(reference)
    library = _library(data.stores, tmp_path / "library")
    stores = sorted(library.glob("*.zarr"))
    SearchEngine(tiny_bundle, runtime).index(stores[0])  # indexed before the job
    flag = tmp_path / "killed"
    with connect("local:2") as client:
        client.register_plugin(KillFirstWriter(str(flag)))
        report = index_library(client, tiny_bundle, stores, runtime=runtime)
        assert flag.exists()  # a worker did die mid-write
        assert report.workers == 2
        assert report.present == [str(stores[0])]
        assert sorted(report.indexed) == [str(p) for p in stores[1:]]
        assert not list(library.rglob(".cache-tmp-*"))
        want = _index_files(reference)
        assert want and _index_files(library) == want
        # re-run through the CLI on the same cluster, by its address: nothing is missing
        out = subprocess.run([script("gaze-search"), str(library), "--index", "--scheduler",
                              client.scheduler.address, "--bundle", str(tiny_bundle)],
                             capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"indexed 0 store(s), {len(stores)} already indexed, on 2 worker(s)" in out.stdout
    assert _index_files(library) == want


def test_scheduler_option_errors_and_no_dask_without_it(tiny_trained, tiny_bundle):
    data, _ = tiny_trained
    for args, needle in ((["--index", "--scheduler", "local:0"], "--scheduler 'local:0': "
                          "expected local:N with N >= 1"),
                         (["q", "--scheduler", "local:2"], "--scheduler goes with --index")):
        out = subprocess.run([script("gaze-search"), str(data.stores), *args, "--bundle",
                              str(tiny_bundle)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert needle in out.stderr, out.stderr
    code = ("import sys; from gazenlq.cli import search; from gazenlq.engine import "
            "SearchEngine; assert not [m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed')], 'dask imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
