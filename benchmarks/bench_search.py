"""gaze-search speed and memory: cold start, warm latency and throughput versus video length
and query batch, the split of time between stages, and peak memory versus video length.

    python -m benchmarks.bench_search [--bundle BUNDLE] [--quick]

BUNDLE is a gaze-export bundle for EgoSim's default feature widths (Dv 256, Dg 512); without
one, a small-preset GazeNLQ with random weights is exported (speed does not depend on the
weights). Writes benchmarks/results/search.json and refreshes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.common import ROOT, Section, cpu_label, measure, search_child, write_result

OUT = ROOT / "out" / "search"
QUERIES = ["where did I put the bulb", "which tool did I pick up", "what did I put in the box",
           "where is my wallet", "who handed me the keys", "how many eggs did I cut",
           "in which room did I see the kettle", "where was the mug before I washed the pan"]

def video_store(hours: float) -> Path:
    """An EgoSim session of ``hours`` (no gaze maps: search does not read them)."""
    from gazenlq.store import find_stores
    from gazenlq.synth.config import EgoSimConfig
    from gazenlq.synth.dataset import generate

    cfg = EgoSimConfig(seed=7, sessions=1, session_hours=hours, gaze_fraction=0.0)
    out = OUT / f"video-{hours:g}h-{cfg.fingerprint()}"  # a new EgoSim config, a new store
    generate(cfg, out)
    return find_stores(out / "stores")[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, help="default: a random-weight small-preset "
                    "bundle exported into benchmarks/out/search")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from gazenlq.engine import SearchEngine, SearchOptions
    from gazenlq.store import FeatureStore

    if args.bundle is None:
        from benchmarks.models import config, random_bundle

        args.bundle = random_bundle(config("small", video_dim=256, gaze_dim=512), OUT)
    lengths = (1 / 6, 1.0) if args.quick else (1 / 6, 1.0, 3.0, 10.0)
    stores = {h: video_store(h) for h in lengths}
    labels = {h: ("10 min" if h < 1 else f"{h:g} h") for h in lengths}
    bundle = str(args.bundle)

    # memory and cold start: fresh processes
    mem = Section("Peak memory of one search in a fresh process (VmHWM)",
                  ["video", "steps", "no index: MiB", "index present: MiB"])
    cold = Section("Cold start: new process to first printed result (index present)",
                   ["video", "median s", "min-max s", "runs"])
    peaks = {}
    for h, store in stores.items():
        shutil.rmtree(store / "cache", ignore_errors=True)
        r_build, _, _ = search_child([str(store), QUERIES[0], "--bundle", bundle, "--quiet"])
        r_cached, _, _ = search_child([str(store), QUERIES[0], "--bundle", bundle,
                                       "--quiet"])
        peaks[h] = r_build["peak_kib"] / 1024
        mem.rows.append([labels[h], FeatureStore.open(store).num_steps,
                         round(r_build["peak_kib"] / 1024, 1),
                         round(r_cached["peak_kib"] / 1024, 1)])
        walls = [search_child([str(store), QUERIES[0], "--bundle", bundle, "--quiet"])[2]
                 for _ in range(3)]
        cold.rows.append([labels[h], round(statistics.median(walls), 3),
                          f"{min(walls):.3f}-{max(walls):.3f}", len(walls)])
    if 10.0 in peaks:
        mem.notes = (f"10 h / 1 h peak (no index) = {peaks[10.0] / peaks[1.0]:.3f}: windows "
                     "are streamed, so memory does not grow with the video.")
    cold.notes = ("Wall time of `python -c 'gazenlq.cli.search.main(...)'` including the "
                  "interpreter, imports, bundle verification (sha256), ONNX Runtime sessions, "
                  "Numba kernel loading, the search and printing.")

    # warm latency / throughput: one engine, index present
    engine = SearchEngine(bundle)
    warm = Section("Warm search (engine loaded, index present)",
                   ["video", "queries per call", "latency per call s [p10-p90]",
                    "s per query", "queries/s"])
    split = Section("Where the time goes (warm, 8 queries per call)",
                    ["video", "io", "video model", "cache read", "ground model",
                     "post-processing", "text"])
    curve = []
    for h, store in stores.items():
        engine.index(store)  # make sure the index exists
        for batch in (1, 8, 32) if h <= 1 else (1, 8):
            queries = (QUERIES * 4)[:batch]
            t = measure(lambda q=queries, s=store: engine.search(s, q),
                        repeat=5 if h <= 1 else 3, warmup=1)
            warm.rows.append([labels[h], batch, f"{t.median:.4f} [{t.p10:.4f}-{t.p90:.4f}]",
                              round(t.median / batch, 4), round(batch / t.median, 1)])
            curve.append({"hours": h, "batch": batch, "median_s": t.median, "p10_s": t.p10,
                          "p90_s": t.p90})
        tm = engine.search(store, QUERIES).timings
        split.rows.append([labels[h], *(round(v, 4) for v in (
            tm.io, tm.video_model, tm.cache_read, tm.ground_model, tm.postprocess, tm.text))])
    no_cache = SearchEngine(bundle, options=SearchOptions(use_cache=False, write_cache=False))
    exact = Section("Exact (no cache) versus cached search, 8 queries",
                    ["video", "no cache s", "cached s", "ratio"])
    for h, store in stores.items():
        t0 = time.perf_counter()
        no_cache.search(store, QUERIES)
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine.search(store, QUERIES)
        b = time.perf_counter() - t0
        exact.rows.append([labels[h], round(a, 3), round(b, 3), round(a / b, 2)])
    exact.notes = "One run each, after the warm measurements above (index present)."
    from benchmarks.plots import search_plots

    title = "Search engine (gaze-search, ONNX Runtime CPU)"
    write_result("search", title, [cold, warm, split, exact, mem],
                 plots=search_plots(curve, f"small preset, ONNX Runtime CPU, {cpu_label()}"),
                 summary={"peak_ratio_10h_1h": (peaks[10.0] / peaks[1.0]) if 10.0 in peaks
                          else None, "warm": curve, "bundle": bundle},
                 command="python -m benchmarks.bench_search" + (" --quick" if args.quick
                                                                 else ""))


if __name__ == "__main__":
    main()
