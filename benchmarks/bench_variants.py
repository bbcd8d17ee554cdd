"""Search cost per model variant: what each gaze system costs the engine.

    python -m benchmarks.bench_variants [--quick]

For the no-gaze baseline, GazeNLQ (a gaze estimator in the per-video graph) and Gaze-VLM's
``gaze_reg`` (attention pooling of the cell features, no estimator; its twin ``gaze_pool``
has the same graphs): the per-video graph's cost (building the index of a 1-hour store,
fresh cache each time) and a warm query (index present, coarse to fine and exhaustive).
Small preset, random weights (speed does not depend on them), ONNX Runtime CPU. Writes
benchmarks/results/variants.json and refreshes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile

from benchmarks.bench_search import OUT, QUERIES, video_store
from benchmarks.common import Section, measure, write_result

VARIANTS = {"none": "no gaze (GroundNLQ)", "gaze": "GazeNLQ (gaze estimator)",
            "gaze_reg": "Gaze-VLM gaze_reg (attention pooling)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10-minute store, fewer repeats")
    args = ap.parse_args()
    from benchmarks.models import config, random_bundle
    from gazenlq.engine import SearchEngine, SearchOptions
    from gazenlq.store import FeatureStore

    hours = 1 / 6 if args.quick else 1.0
    store = video_store(hours)
    steps = FeatureStore.open(store).num_steps
    repeat = 2 if args.quick else 5
    index = Section(f"Per-video graph: building the index of a {hours * 60:g}-minute store "
                    f"({steps} steps)", ["model", "median s", "min-max s",
                                         "in the graph s", "s per hour", "runs"])
    warm = Section("Warm query (index present, one query per call)",
                   ["model", "coarse to fine: ms [p10-p90]", "exhaustive: ms [p10-p90]"])
    summary = {}
    for variant, label in VARIANTS.items():
        bundle = random_bundle(config("small", video_dim=256, gaze_dim=512, variant=variant),
                               OUT / f"variant-{variant}")
        builds = []
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as cache, SearchEngine(
                    str(bundle), options=SearchOptions(cache_dir=cache)) as eng:
                t = eng.index(store)
                builds.append((t.total, t.video_model))
        builds.sort()
        med, graph = builds[len(builds) // 2]
        index.rows.append([label, round(med, 3), f"{builds[0][0]:.3f}-{builds[-1][0]:.3f}",
                           round(graph, 3), round(med / hours, 3), len(builds)])
        row = [label]
        for mode in ("coarse", "exhaustive"):
            with tempfile.TemporaryDirectory() as cache, SearchEngine(
                    str(bundle), options=SearchOptions(cache_dir=cache, mode=mode)) as eng:
                eng.index(store)
                qs = iter(QUERIES * 100)
                t = measure(lambda e=eng, q=qs: e.search(store, next(q)), repeat=4 * repeat,
                            warmup=2)
            row.append(f"{t.median * 1e3:.1f} [{t.p10 * 1e3:.1f}-{t.p90 * 1e3:.1f}]")
            summary[f"{variant}_{mode}_ms"] = t.median * 1e3
        warm.rows.append(row)
        summary[f"{variant}_index_s_per_hour"] = med / hours
    base = summary["gaze_index_s_per_hour"]
    index.notes = ("The per-video graph runs once per store and bundle (its output is the "
                   "index). Ratios to GazeNLQ: " + ", ".join(
                       f"{VARIANTS[v]} {summary[f'{v}_index_s_per_hour'] / base:.2f}x"
                       for v in VARIANTS) + ".")
    warm.notes = ("Per query, GazeNLQ and gaze_reg run the same text graph and ground graphs "
                  "of the same shapes (the gaze context enters at the model's width), the "
                  "no-gaze graph the same without the gaze fusion; differences between them "
                  "here are within this machine's run-to-run spread. Queries cycle through "
                  "the search benchmark's eight questions.")
    write_result("variants", "Search cost per model variant (small preset, ONNX Runtime CPU)",
                 [index, warm], summary=summary,
                 command="python -m benchmarks.bench_variants" + (" --quick" if args.quick
                                                                  else ""))


if __name__ == "__main__":
    main()
