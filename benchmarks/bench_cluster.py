"""Beyond one machine: indexing throughput on Dask (single process, 1 and 2 local
workers), search over S3 versus the local disk, and DDP training step time (1 vs 2
processes on the CPU).

    python -m benchmarks.bench_cluster [--bundle BUNDLE] [--quick]

BUNDLE is a gaze-export bundle for EgoSim's default widths; without one, a small-preset
GazeNLQ with random weights is exported (speed does not depend on the weights). The S3
server is moto in server mode on 127.0.0.1, started here (tools/s3server.py). Writes
benchmarks/results/cluster.json and refreshes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import ROOT, Section, measure, search_child, write_result

OUT = ROOT / "out" / "cluster"
QUERIES = ["where did I put the bulb", "which tool did I pick up", "what did I put in the box",
           "where is my wallet", "who handed me the keys", "how many eggs did I cut",
           "in which room did I see the kettle", "where was the mug before I washed the pan"]


def _egosim(name: str, sessions: int, hours: float) -> Path:
    """EgoSim sessions of ``hours`` each (no gaze maps: search does not read them)."""
    from gazenlq.synth.config import EgoSimConfig
    from gazenlq.synth.dataset import generate

    cfg = EgoSimConfig(seed=11, sessions=sessions, session_hours=hours, gaze_fraction=0.0)
    out = OUT / f"{name}-{cfg.fingerprint()}"
    generate(cfg, out)
    return out / "stores"


def _fresh(library: Path, name: str) -> Path:
    """A copy of ``library`` without any index."""
    dst = OUT / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(library, dst, ignore=shutil.ignore_patterns("cache", ".cache-tmp-*"))
    return dst


def indexing(bundle: str, sessions: int, hours: float) -> tuple[Section, dict]:
    from gazenlq.engine import RuntimeOptions, SearchEngine
    from gazenlq.engine.cluster import connect, index_library, load_engines, worker_runtime
    from gazenlq.store import find_stores

    library = _egosim("library", sessions, hours)
    total_h = sessions * hours
    rows, summary = [], {}
    lib = _fresh(library, "single")
    t0 = time.perf_counter()
    engine = SearchEngine(bundle)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.index(lib)
    single = time.perf_counter() - t0
    rows.append(["single process (all cores)", "-", round(load, 2), round(single, 2),
                 round(total_h / (single / 60), 2), "-"])
    summary["single_s"] = single
    per_store_rerun = {}
    for n in (1, 2):
        lib = _fresh(library, f"workers{n}")
        stores = find_stores(lib)
        t0 = time.perf_counter()
        with connect(f"local:{n}") as client:
            client.wait_for_workers(n)
            start = time.perf_counter() - t0
            runtime = worker_runtime(RuntimeOptions(), f"local:{n}")
            t0 = time.perf_counter()
            load_engines(client, bundle, runtime=runtime)
            engines = time.perf_counter() - t0
            report = index_library(client, bundle, stores, runtime=runtime)
            again = index_library(client, bundle, stores, runtime=runtime)
        assert len(report.indexed) == len(stores) and len(again.present) == len(stores)
        per_store_rerun[n] = again.seconds / len(stores)
        summary[f"workers{n}_s"] = report.seconds
        rows.append([f"Dask, {n} local worker{'s' * (n > 1)} ({runtime.threads} thread"
                     f"{'s' * (runtime.threads > 1)} each)", round(start, 2), round(engines, 2),
                     round(report.seconds, 2), round(total_h / (report.seconds / 60), 2),
                     round(per_store_rerun[n] * 1e3, 1)])
    eff = summary["workers1_s"] / (2 * summary["workers2_s"])
    overhead = (summary["workers1_s"] - single) / sessions
    summary.update(efficiency_2_workers=eff, per_store_overhead_s=overhead,
                   rerun_per_store_s=per_store_rerun, hours=total_h, stores=sessions)
    section = Section(
        f"Indexing a library of {sessions} EgoSim videos x {hours:g} h = {total_h:g} h "
        "(per-video graph, index published into each store)",
        ["path", "cluster start s", "engine load s (every worker)", "indexing s",
         "hours of video per min",
         "re-run, all indexed: ms per store"], rows,
        f"Scaling efficiency 1 -> 2 workers: {eff:.2f} (time with 1 worker / (2 x time "
        f"with 2)). Per-store overhead of the Dask path over the single process: "
        f"{overhead:.3f} s per store ((1-worker indexing - single process) / stores; the "
        "engines are loaded on the workers before the clock starts, as the single process's "
        "is). A re-run over an indexed library (the "
        "resumption path: one task per store that finds the index) costs the last column "
        "per store. This machine has 2 cores shared with other work, so 2 workers of 1 "
        "thread compete with 1 worker of 2 threads for the same cores: the figure measures "
        "overhead and parallel efficiency, not more hardware.")
    return section, summary


def s3_search(bundle: str, hours: float) -> tuple[Section, dict]:
    from gazenlq.engine import SearchEngine
    from tools.s3server import local_s3, upload

    local = _fresh(_egosim("s3video", 1, hours), "s3local")
    store = next(local.glob("*.zarr"))
    os.environ["GAZENLQ_CACHE_DIR"] = str(OUT / "index")  # both stores' indexes
    shutil.rmtree(OUT / "index", ignore_errors=True)
    rows, summary = [], {}
    with local_s3():
        url = upload(store, "bench", f"videos/{store.name}")
        for name, target in (("local disk", str(store)), ("S3 (moto, 127.0.0.1)", url)):
            engine = SearchEngine(bundle)
            t0 = time.perf_counter()
            engine.search(target, QUERIES)  # no index yet: reads every feature, builds it
            build = time.perf_counter() - t0
            engine = SearchEngine(bundle)
            t0 = time.perf_counter()
            engine.search(target, QUERIES[:1])
            first = time.perf_counter() - t0
            warm = measure(lambda e=engine, t=target: e.search(t, QUERIES), repeat=5,
                           warmup=1)
            walls = [search_child([target, QUERIES[0], "--bundle", bundle, "--quiet"])[2]
                     for _ in range(3)]
            rows.append([name, round(build, 3), round(first, 3),
                         f"{warm.median:.4f} [{warm.p10:.4f}-{warm.p90:.4f}]",
                         round(statistics.median(walls), 3)])
            summary[name] = {"build_s": build, "first_s": first, "warm_s": warm.median,
                             "cold_process_s": statistics.median(walls)}
    section = Section(
        f"Search of a {hours:g}-hour store: S3 versus the local disk",
        ["store", "first search, no index s (8 queries)", "cold: new engine, first search s",
         "warm: 8 queries s [p10-p90]", "cold process: gaze-search wall s"], rows,
        "The indexes of both stores live in a local directory ($GAZENLQ_CACHE_DIR), "
        "so once it is built a warm search reads nothing from S3; cold costs are opening "
        "the store (metadata requests) plus the index. 'No index' reads every feature chunk "
        "(from S3 over HTTP on 127.0.0.1, or from the disk) and runs the per-video graph. "
        "The S3 server runs as a thread of the benchmark process.")
    return section, summary


def ddp(windows: int, queries: int, repeat: int) -> tuple[Section, dict]:
    from gazenlq.training.distributed import run_local

    rows, summary = [], {}
    for n, threads in ((1, 1), (1, os.cpu_count() or 1), (2, 1)):
        out = run_local(n, "-m", "benchmarks.ddp_step", str(windows), str(queries),
                        str(repeat), str(threads), cwd=ROOT.parent)
        if out.returncode:
            raise RuntimeError(f"benchmarks.ddp_step on {n} ranks failed:\n"
                               f"{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([n, r["threads_per_process"], f"{windows} x 256 steps, "
                     f"{windows * queries} queries",
                     f"{r['median_s'] * 1e3:.1f} [{r['p10_s'] * 1e3:.1f}-"
                     f"{r['p90_s'] * 1e3:.1f}]", round(windows * queries / r["median_s"], 1)])
        summary[f"processes{n}_threads{threads}_ms"] = r["median_s"] * 1e3
    section = Section(
        "DDP training step on the CPU (gloo), small preset, the same global batch",
        ["processes", "threads each", "global batch", "step ms [p10-p90]", "queries/s"], rows,
        "Ranks started by distributed.run_local, every socket on 127.0.0.1; each process "
        "takes its share of the global batch (stage 2, "
        "random batches of the trainer's shapes), the gradients are averaged by DDP. "
        "1 process x 1 thread against 2 processes x 1 thread is the scaling on 2 cores; "
        "1 process x 2 threads is the alternative use of the same 2 cores (intra-op "
        "threads), sensitive to other load on the machine. The NCCL path is the same code "
        "on GPUs "
        "(tests/test_distributed.py skips it without 2 GPUs).")
    return section, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.bundle is None:
        from benchmarks.models import config, random_bundle

        args.bundle = random_bundle(config("small", video_dim=256, gaze_dim=512), OUT)
    bundle = str(args.bundle)
    load_before = os.getloadavg()[0]
    sessions, hours = (4, 0.1) if args.quick else (8, 0.5)
    sections, summary = [], {}
    for name, (section, part) in (
            ("indexing", indexing(bundle, sessions, hours)),
            ("s3", s3_search(bundle, 0.2 if args.quick else 1.0)),
            ("ddp", ddp(4, 3, 3 if args.quick else 5))):
        sections.append(section)
        summary[name] = part
        print(json.dumps({name: part}, default=float), flush=True)
    load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
    for section in sections:  # other work on the machine changes every figure
        section.notes += f" Load average (1 min) at the start / end of the run: {load}."
    write_result("cluster", "Beyond one machine: Dask indexing, S3 stores, DDP training",
                 sections, summary={**summary, "bundle": bundle, "loadavg": load},
                 command="python -m benchmarks.bench_cluster" + (" --quick" if args.quick
                                                                  else ""))


if __name__ == "__main__":
    main()
