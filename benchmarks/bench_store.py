"""EgoSim generation speed, feature-store read throughput, and bounded-memory reading.

    python -m benchmarks.bench_store [--quick]

Writes benchmarks/results/store.json and refreshes benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, Section, measure, write_result

OUT = ROOT / "out" / "store"

# VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec and reports the parent's peak.
_READ_CHILD = """
import json, sys, time
from gazenlq.store import FeatureStore

def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

path, length, overlap, arrays = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
store = FeatureStore.open(path)
base = kib("VmHWM")
t0 = time.perf_counter()
steps = nbytes = 0
for w in store.windows(length, overlap, arrays=arrays, prefetch=2):
    steps += len(w)
    nbytes += sum(a.nbytes for a in w.arrays.values())
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "steps": steps, "bytes": nbytes, "num_steps": store.num_steps,
                  "rss_base_kib": base,
                  "rss_peak_kib": kib("VmHWM")}))
"""


def _generate(name: str, **cfg_kw) -> tuple[Path, float, int]:
    """One EgoSim dataset written fresh; returns (dir, seconds, total steps)."""
    from gazenlq.store import FeatureStore, find_stores
    from gazenlq.synth.config import EgoSimConfig
    from gazenlq.synth.dataset import generate

    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    generate(EgoSimConfig(**cfg_kw), out, jobs=1)
    dt = time.perf_counter() - t0
    steps = sum(FeatureStore.open(p).num_steps for p in find_stores(out / "stores"))
    return out, dt, steps


def _read(path: Path, length: int, overlap: int, arrays: list[str]) -> dict:
    """Read a store window by window in a fresh process (peak RSS is that process's own)."""
    out = subprocess.run([sys.executable, "-c", _READ_CHILD, str(path), str(length),
                          str(overlap), *arrays], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    from gazenlq.store import find_stores

    hours = (0.1, 1.0) if args.quick else (1.0, 10.0)

    gen = Section("EgoSim generation speed (1 process)",
                  ["dataset", "sessions", "steps", "seconds", "steps/s"])
    for name, kw in [("default-no-gaze", {"sessions": 20, "gaze_fraction": 0.0}),
                     ("default-with-gaze", {"sessions": 20, "gaze_fraction": 1.0})]:
        _, dt, steps = _generate(name, **kw)
        gen.rows.append([name, kw["sessions"], steps, round(dt, 2), round(steps / dt)])
    stores = {}
    for h in hours:
        out, dt, steps = _generate(f"long-{h:g}h", sessions=1, session_hours=h,
                                   gaze_fraction=1.0)
        stores[h] = find_stores(out / "stores")[0]
        gen.rows.append([f"{h:g} h session, gaze maps", 1, steps, round(dt, 2),
                         round(steps / dt)])
    gen.notes = ("Default config: Dv 256, Dg 512 (4x4 cells x 32), float16, Blosc-zstd "
                 "bit-shuffle; 'with gaze' also draws and stores 64x64 GLC maps for every step.")

    read = Section("Store read throughput (windows of 2560 steps, overlap 256, prefetch 2)",
                   ["store", "arrays", "steps/s", "MB/s (decoded)", "seconds"])
    mem = Section("Peak memory reading window by window (fresh process)",
                  ["store", "steps", "peak RSS MiB", "RSS after imports MiB",
                   "growth MiB"])
    feats = ["video_features", "gaze_features"]
    everything = [*feats, "gaze_maps", "gaze_type"]
    peaks = {}
    for h, path in stores.items():
        for label, arrays in (("features", feats), ("all incl. gaze maps", everything)):
            r = _read(path, 2560, 256, arrays)
            read.rows.append([f"{h:g} h", label, round(r["steps"] / r["seconds"]),
                              round(r["bytes"] / r["seconds"] / 1e6, 1),
                              round(r["seconds"], 3)])
            if label != "features":
                peaks[h] = r["rss_peak_kib"] / 1024
                mem.rows.append([f"{h:g} h", r["num_steps"], round(peaks[h], 1),
                                 round(r["rss_base_kib"] / 1024, 1),
                                 round((r["rss_peak_kib"] - r["rss_base_kib"]) / 1024, 1)])
    lo, hi = hours
    ratio = peaks[hi] / peaks[lo]
    mem.notes = (f"Peak RSS ratio {hi:g} h / {lo:g} h = {ratio:.3f} (bounded: the reader holds "
                 "one window plus one chunk per array, and two prefetched windows).")

    from gazenlq.store import FeatureStore

    store = FeatureStore.open(stores[lo])
    t = measure(lambda: store.read("video_features", 0, 2560), repeat=20)
    read.rows.append([f"{lo:g} h", "video_features, one random-access 2560-step read",
                      round(2560 / t.median), round(2560 * store.dim("video_features") * 2
                                                    / t.median / 1e6, 1),
                      round(t.median, 4)])
    write_result("store", "Feature store and EgoSim", [gen, read, mem],
                 summary={"peak_rss_ratio": ratio})
    print(json.dumps({"peak_rss_ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
