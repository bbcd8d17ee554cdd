"""One-command GPU check: every GPU path of gaze-search against the CPU, end to end.

    python -m benchmarks.gpu_check [--out DIR]        (or: make gpu-check)

Exports a small random-weight bundle (fp32 and fp16 graphs), builds its native TensorRT
engines at fp32 and fp16 (``gaze-export BUNDLE --trt --fp16``), writes a half-hour EgoSim
video (two model windows), then searches it for 8 queries with ``cpu`` (the reference; and
its fp16 graphs, the tolerance's baseline) and with ``cuda``, ``tensorrt`` and
``trt-native`` at fp32 and fp16, printing for each which provider really ran every graph.
Each device's top-5 moments per query must be the CPU's:
the same scores rank by rank and the same moments (video, boundaries) within the precision's
tolerance (:data:`TOLERANCES`; matched as sets, so near-ties may swap places, and a moment
tied with the 5th may be replaced by its tie). Its random weights are scaled so that the
top moments' scores differ (``benchmarks.models.random_checkpoint(score_gain=...)``).

Exit status: 0 when every check passed, or when this machine has no GPU backend at all (the
check is then skipped and says why); 1 when a result differs or a GPU backend is missing
on a machine that has some (each with the reason).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ROOT

GPU_DEVICES = ("cuda", "tensorrt", "trt-native")
HOURS = 0.5
VIDEO_DIM, CELL_DIM = 256, 32
SCORE_GAIN = 5.0  # random weights whose top moments' scores differ (benchmarks.models)
TOLERANCES = {"fp32": (0.01, 1e-3), "fp16": (None, 5e-3)}
"""precision -> (boundary tolerance in seconds, None: one feature step; score tolerance)."""

Moment = tuple[str, float, float, float]  # video, start_s, end_s, score


@dataclass
class Compared:
    """Moments compared, near-ties exchanged at the cut, and what differed (one line each)."""

    moments: int
    problems: list[str] = field(default_factory=list)
    exchanged: int = 0


def compare_top(ref: list[Moment], got: list[Moment], *, time_tol: float, score_tol: float
                ) -> Compared:
    """The same top-k within tolerance: the k-th best scores agree rank by rank within
    ``score_tol``, and every reference moment has its own counterpart in ``got`` (the same
    video, both boundaries within ``time_tol`` seconds, the score within ``score_tol``) -
    except a moment tied with the cut (its score within ``score_tol`` of the k-th), which
    another precision may rank just below the k-th and replace with its tie."""
    if len(ref) != len(got):
        return Compared(len(ref), [f"{len(ref)} moments in the reference, {len(got)} here"])
    problems = [f"rank {k + 1}: score {b:.4f}, the reference's {a:.4f}" for k, (a, b) in
                enumerate(zip(sorted((m[3] for m in ref), reverse=True),
                              sorted((m[3] for m in got), reverse=True)))
                if abs(a - b) > score_tol]
    free = list(got)
    unmatched = []
    for moment in ref:
        video, s, e, score = moment
        match = next((g for g in free if g[0] == video and abs(g[1] - s) <= time_tol
                      and abs(g[2] - e) <= time_tol and abs(g[3] - score) <= score_tol), None)
        if match is None:
            unmatched.append(moment)
        else:
            free.remove(match)
    cut = min((m[3] for m in ref), default=0.0)
    exchanged = 0
    for video, s, e, score in unmatched:
        tie = next((g for g in free if abs(g[3] - score) <= score_tol
                    and abs(g[3] - cut) <= score_tol), None)
        if abs(score - cut) <= score_tol and tie is not None:
            free.remove(tie)
            exchanged += 1
        else:
            problems.append(f"{video} {s:.3f}-{e:.3f} s (score {score:.4f}) has no "
                            f"counterpart within {time_tol:g} s / {score_tol:g}")
    return Compared(len(ref), problems, exchanged)


def _search(bundle: Path, store: Path, device: str, precision: str, queries: list[str]
            ) -> tuple[list[list[Moment]], dict[str, list[str]], float]:
    from gazenlq.engine import RuntimeOptions, SearchEngine, SearchOptions

    engine = SearchEngine(bundle, RuntimeOptions(device, precision),
                          SearchOptions(mode="exhaustive", use_cache=False, write_cache=False))
    try:
        result = engine.search(store, queries, top_k=5)
    finally:
        engine.runtime.close()
    moments = [[(m.video, m.start_s, m.end_s, m.score) for m in r.moments] for r in result]
    return moments, dict(engine.runtime.providers), result.timings.total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check",
                    help="where the bundle, engines and video are written (reused)")
    args = ap.parse_args(argv)
    from benchmarks.devices import detect

    devices = detect()
    missing = {d: r for d, r in devices.engine_devices.items() if d != "cpu" and r}
    if len(missing) == len(GPU_DEVICES) and not devices.torch_cuda:
        print(f"gpu-check skipped: no GPU backend on this machine (GPU: "
              f"{devices.gpu or 'none found'})")
        for device, reason in missing.items():
            print(f"  {device}: {reason}")
        return 0

    from benchmarks.bench_gpu import QUERIES, video_store
    from benchmarks.models import config, random_bundle
    from gazenlq.bundle.manifest import verify_bundle
    from gazenlq.errors import GazeNLQError
    from gazenlq.export.tensorrt import TrtOptions, build_engines

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"GPU: {devices.gpu}; onnxruntime providers: {', '.join(devices.ort_providers)}")
    bundle = random_bundle(config("small", video_dim=VIDEO_DIM, gaze_dim=16 * CELL_DIM),
                           args.out, fp16=True, score_gain=SCORE_GAIN)
    failures = [f"{d}: not checked: {r}" for d, r in missing.items()]
    if "trt-native" not in missing:
        t0 = time.perf_counter()
        build_engines(bundle, TrtOptions(fp16=True), log=print)
        print(f"native TensorRT engines (fp32, fp16) built in {time.perf_counter() - t0:.0f} s")
    store = video_store(args.out, HOURS, video_dim=VIDEO_DIM, cell_dim=CELL_DIM)
    step_s = verify_bundle(bundle).time_grid.seconds_per_step
    queries = list(QUERIES)
    ref, providers, seconds = _search(bundle, store, "cpu", "fp32", queries)
    print(f"{'device':<11} {'precision':<9} {'seconds':>8}  {'same top-5':<11} ran on")
    print(f"{'cpu':<11} {'fp32':<9} {seconds:8.2f}  {'reference':<11} "
          f"{_ran_on(providers)}")
    runs = [("cpu", "fp16")]  # the fp16 graphs on the CPU: the tolerance's baseline
    for device in GPU_DEVICES:
        if device in missing:
            print(f"{device:<11} {'-':<9} {'-':>8}  {'-':<11} skipped: {missing[device]}")
        else:
            runs += [(device, "fp32"), (device, "fp16")]
    for device, precision in runs:
        time_tol, score_tol = TOLERANCES[precision]
        try:
            got, providers, seconds = _search(bundle, store, device, precision, queries)
        except GazeNLQError as exc:
            failures.append(f"{device} {precision}: {exc}")
            print(f"{device:<11} {precision:<9} {'-':>8}  {'error':<11} {exc}")
            continue
        checks = [compare_top(r, g, time_tol=step_s if time_tol is None else time_tol,
                              score_tol=score_tol) for r, g in zip(ref, got)]
        same = sum(not c.problems for c in checks)
        ties = sum(c.exchanged for c in checks)
        for q, c in zip(queries, checks):
            failures += [f"{device} {precision} {q!r}: {p}" for p in c.problems]
        print(f"{device:<11} {precision:<9} {seconds:8.2f}  "
              f"{f'{same}/{len(queries)}':<11} {_ran_on(providers)}"
              f"{f' ({ties} near-tie(s) exchanged at the cut)' if ties else ''}")
    if failures:
        print(f"gpu-check FAILED ({len(failures)}):", *failures, sep="\n  ")
        return 1
    print("gpu-check passed: every GPU backend gives the CPU's top-5 within tolerance")
    return 0


def _ran_on(providers: dict[str, list[str]]) -> str:
    """``text: CUDAExecutionProvider, ...``: the first provider of every graph's session."""
    return ", ".join(f"{graph}: {chain[0]}" for graph, chain in sorted(providers.items()))


if __name__ == "__main__":
    sys.exit(main())
