"""Every benchmark in one command, for this machine's devices.

    python -m benchmarks [--quick] [--only kernels,store,...] [--bundle BUNDLE]

Detects the devices (CPU; CUDA and TensorRT through PyTorch, onnxruntime-gpu and TensorRT
when present), then runs each benchmark in its own process (so its memory and cold-start
figures are its own) and records what ran, how long it took, and what was skipped and
why. Results: ``benchmarks/results/*.json`` and ``benchmarks/RESULTS.md`` (with machine
information and plots under ``benchmarks/plots/``). ``make bench`` runs this.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import subprocess
import sys
import time
from dataclasses import dataclass

from benchmarks.common import RESULTS_DIR, Section, write_result
from benchmarks.devices import detect


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    what: str


BENCHES = (
    Bench("kernels", "bench_kernels", "Soft-NMS / decoding kernels vs NumPy, cold start"),
    Bench("store", "bench_store", "EgoSim generation, store reads, bounded memory"),
    Bench("export", "bench_export", "ONNX parity and latency vs PyTorch eager"),
    Bench("search", "bench_search", "search latency / throughput / memory vs length and batch"),
    Bench("train", "bench_train", "training step throughput per preset and device"),
    Bench("gpu", "bench_gpu", "paper preset on every backend (CUDA / TensorRT when present)"),
    Bench("cluster", "bench_cluster", "Dask indexing 1/2 workers, S3 vs disk search, DDP step"),
    Bench("ann", "bench_ann", "coarse span search: exact BLAS vs ANN, recall, crossover"),
    Bench("variants", "bench_variants", "search cost per gaze system: per-video graph, query"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated subset of: "
                    + ", ".join(b.name for b in BENCHES))
    ap.add_argument("--bundle", help="bundle for the search benchmark (default: a "
                    "random-weight small-preset bundle)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [b.name for b in BENCHES]
    unknown = sorted(set(names) - {b.name for b in BENCHES})
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {', '.join(unknown)}")
    devices = detect()
    print("devices:", {k: v or "available" for k, v in devices.engine_devices.items()},
          flush=True)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    rows, failed, t_all = [], [], time.perf_counter()
    for bench in BENCHES:
        if bench.name not in names:
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{bench.module}"]
        if args.quick:
            cmd.append("--quick")
        if bench.name == "search" and args.bundle:
            cmd += ["--bundle", args.bundle]
        shown = " ".join(["python", *cmd[1:]])
        print(f"== {bench.name}: {shown}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd)
        seconds = time.perf_counter() - t0
        status = "ok" if code == 0 else f"failed (exit {code})"
        if code:
            failed.append(bench.name)
        rows.append([bench.name, bench.what, f"`{shown}`", status, round(seconds, 1)])
    total = time.perf_counter() - t_all
    dev = Section("Devices", ["backend", "status"], [
        ["CPU (PyTorch, ONNX Runtime, Numba)", "available"],
        ["PyTorch CUDA (training, eager baselines)",
         "available" if devices.torch_cuda else f"skipped: {devices.torch_cuda_reason}"],
        *[[f"gaze-search --device {d}", "available" if not r else f"skipped: {r}"]
          for d, r in devices.engine_devices.items()]],
        f"GPU: {devices.gpu or 'none found'}; onnxruntime providers: "
        f"{', '.join(devices.ort_providers) or 'none'}.")
    runs = Section("Benchmarks of this run", ["benchmark", "what", "command", "status",
                                              "seconds"], rows,
                   f"Whole suite: {total / 60:.1f} minutes"
                   f"{' (--quick)' if args.quick else ''}, started {started}.")
    write_result("_suite", "Suite: one command, this machine", [dev, runs],
                 summary={"devices": devices.to_dict(), "seconds": total, "failed": failed,
                          "quick": args.quick},
                 command="python -m benchmarks" + (" --quick" if args.quick else "")
                 + (f" --only {args.only}" if args.only else ""))
    print(f"suite: {total / 60:.1f} min; results in {RESULTS_DIR.parent / 'RESULTS.md'}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
