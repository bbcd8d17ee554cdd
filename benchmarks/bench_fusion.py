"""Late against early fusion on EgoSim's long-video split: what SnAG-style late fusion
(``gaze-train --fusion late``: the query-independent pyramid computed once per video and
cached, only a light query fusion and the heads per question) gains in speed and what it
does to coarse-to-fine accuracy, beside early fusion (GroundNLQ; the small preset's
until 2026-12-03, the paper preset's).

    python -m benchmarks.bench_fusion [--runs RUNS] [--late-runs LATE]

RUNS and LATE as in ``benchmarks.bench_longvideo`` (``gaze-s0`` and ``none-s0`` of the
small preset on EgoSim's default world, early and late fusion; trained there when not
given, the late run starting from the early run's stage 1). Sections: the late models'
accuracy on the 10-hour split in both modes (M swept; context 16, the default, and 0) and
on ten more sessions of the same world (1,000 questions, never used for tuning: the
first five sessions' figures are too few answers to tell a 3% loss); the index each
bundle builds over the 100-hour library; warm latency per query and batched
throughput of the early and late GazeNLQ bundles, measured in one process, interleaved.
The early models' accuracy is in the "Long videos" section (`bench_longvideo`: the same
recipe, its exhaustive search costs 30 minutes per model). Writes
benchmarks/results/fusion.json and refreshes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks.bench_longvideo import (
    MS,
    OUT,
    _accuracy,
    _bundle,
    _long_split,
    _models,
    _sample,
    _store_hours,
    _subset,
    _throughput,
)
from benchmarks.common import Section, measure, write_result

CACHE = OUT / "fusion-cache"
CONTEXT0_MS = (8, 16, 64)
SECOND_MS = (8, 16, 32, 64)


def _engines(bundles: dict[str, tuple[Path, int]]) -> dict:
    """A coarse-mode engine per (bundle, context), each bundle's index in its own cache
    directory (a store keeps one index per place: two bundles sharing one would rebuild
    it at every call)."""
    from gazenlq.engine import SearchEngine

    return {name: SearchEngine.from_bundle(b, mode="coarse", context=ctx,
                                           cache_dir=str(CACHE / b.name))
            for name, (b, ctx) in bundles.items()}


def _index(bundles: dict[str, tuple[Path, int]], engines: dict, library: list[Path],
           hours: float) -> Section:
    sec = Section("The index over the library, per bundle",
                  ["bundle", "library hours", "build s", "build s per hour",
                   "bytes per hour"])
    done = set()
    for name, (bundle, _) in bundles.items():
        if bundle in done:
            continue
        done.add(bundle)
        root = CACHE / bundle.name
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        engines[name].index(library)
        build = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        sec.rows.append([bundle.name, round(hours), round(build, 1),
                         round(build / hours, 2), f"{size / hours / 1e6:.1f} MB"])
    sec.notes = ("The late bundle's per-video graph caches the packed pyramid (every "
                 "level's features, twice the width) where the early one caches the "
                 "projected inputs.")
    return sec


def _latency(engines: dict, targets: dict[str, tuple[Path, float]], texts: list[str]
             ) -> Section:
    """Warm latency per query, one query per call; every engine on a target in turn."""
    sec = Section("Warm latency per query (one process, index present, one query per call)",
                  ["bundle", "library", "p50 ms", "p10-p90 ms", "queries",
                   "steps the fine model saw per query"])
    for label, (target, _) in targets.items():
        for name, e in engines.items():
            qs = iter(texts * 10)
            t = measure(lambda e_=e, t_=target, q_=qs: e_.search(t_, next(q_)), repeat=40,
                        warmup=2)
            fine = e.search(target, texts[0]).timings.fine_steps
            sec.rows.append([name, label, round(t.median * 1e3, 1),
                             f"{t.p10 * 1e3:.1f}-{t.p90 * 1e3:.1f}", t.runs, fine])
    return sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, help="gaze-train run dir with gaze-s0 and none-s0")
    ap.add_argument("--late-runs", type=Path, help="the same, trained with --fusion late")
    args = ap.parse_args()
    from gazenlq.store import FeatureStore, find_stores

    runs, late = _models(args.runs), _models(args.late_runs, "late")
    gaze_late, none_late = _bundle(late, "gaze", "gaze-late"), _bundle(late, "none",
                                                                      "none-late")
    gaze_early = _bundle(runs, "gaze")
    lib_dir = _long_split(10.0, 10, 100)
    library = find_stores(lib_dir / "stores")
    lib_hours = sum(_store_hours(s) for s in library)
    videos = [FeatureStore.open(s).info.video_uid for s in library[:5]]
    nlq = _subset(lib_dir / "annotations" / "nlq_test.json", videos,
                  OUT / "nlq_10h_accuracy.json")
    from gazenlq.nlq.annotations import load_queries

    texts = [q.text for q in load_queries(nlq).with_text()]

    acc = Section("Accuracy of the late-fusion models on the 10-hour split (whole-session "
                  "ground truth, official metrics)",
                  ["model", "mode", "M", "R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU",
                   "kept of exhaustive R1@0.3 / R5@0.3 (%)", "seconds"])
    curve: list = []
    for variant, bundle in (("gaze-late", gaze_late), ("none-late", none_late)):
        _accuracy(bundle, nlq, lib_dir / "stores", variant, MS, acc.rows, curve)
        rows: list = []
        _accuracy(bundle, nlq, lib_dir / "stores", f"{variant}, context 0", CONTEXT0_MS,
                  rows, curve, context=0)
        acc.rows += [r for r in rows if r[1].startswith("coarse to fine")]
    acc.notes = (f"{len(videos)} sessions of the long split, {len(texts)} queries, each "
                 "answered over its whole session (as in the 'Long videos' section). "
                 "Context: steps either side of a candidate span (16 unless named).")
    # sessions 11-20 of a 20-session split: new, never used for tuning
    stores2, nlq2 = _sample(list(range(10, 20)), "second_sample")
    acc2 = Section("The same on ten more 10-hour sessions (never used for tuning)",
                   acc.columns)
    for variant, bundle in (("gaze-late", gaze_late), ("none-late", none_late)):
        _accuracy(bundle, nlq2, stores2, variant, SECOND_MS, acc2.rows, [])
    acc2.notes = (f"Sessions 11-20 of a 20-session long split of the same world, "
                  f"{len(load_queries(nlq2).with_text())} queries: the first table's "
                  "figures are a few dozen answers found, too few to tell a 3% loss.")

    configs = {"gaze (early fusion)": (gaze_early, 16), "gaze-late": (gaze_late, 16),
               "gaze-late, context 0": (gaze_late, 0)}
    engines = _engines(configs)
    index = _index(configs, engines, library, lib_hours)
    targets = {"10 h session": (library[0], 10.0),
               f"{round(lib_hours)} h library": (lib_dir / "stores", lib_hours)}
    lat = _latency(engines, targets, texts)
    thr = _throughput(engines, library[0], texts)
    write_result("fusion", "Late against early fusion (EgoSim long-video split)",
                 [acc, acc2, index, lat, thr], summary={"accuracy_vs_m": curve},
                 command="python -m benchmarks.bench_fusion" + (
                     f" --runs {args.runs}" if args.runs else "") + (
                     f" --late-runs {args.late_runs}" if args.late_runs else ""))


if __name__ == "__main__":
    main()
