"""gaze-search: natural-language search over feature stores with an exported bundle (no torch)."""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import fail, make_app, print_json, print_table, run
from gazenlq.progress import progress

app = make_app("Answer natural-language queries over a feature store or a directory of "
               "them, without PyTorch: gaze-search video.zarr 'where did I put the bulb' "
               "--bundle BUNDLE.")


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    trt_native = "trt-native"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _stores(target: Path) -> list[Path]:
    if target.suffix == ".zarr" or (target / "zarr.json").is_file():
        return [target]
    if not target.is_dir():
        fail(f"{target}: no such feature store or directory of stores")
    found = sorted(p for p in target.glob("*.zarr") if p.is_dir())
    if not found:
        fail(f"{target}: no feature stores (*.zarr) in this directory")
    return found


@app.command()
def search(
    target: Annotated[Path, typer.Argument(help="A feature store (video.zarr) or a directory "
                                           "of stores searched as one library.")],
    queries: Annotated[list[str] | None, typer.Argument(help="Questions in words.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Exported bundle (gaze-export); default "
                                                "$GAZENLQ_BUNDLE.")] = None,
    queries_file: Annotated[Path | None, typer.Option(
        "--queries", help="One query per line, or an Ego4D NLQ JSON (each query searched "
        "in its clip; stores looked up by video_uid in TARGET).")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Moments per query.")] = 5,
    submission: Annotated[Path | None, typer.Option(help="With an NLQ JSON: write the "
                                                    "official submission file here.")] = None,
    index: Annotated[bool, typer.Option(help="Build the per-video caches of TARGET ahead "
                                        "(no queries needed).")] = False,
    device: Annotated[Device, typer.Option(help="Execution provider.")] = Device.cpu,
    fp16: Annotated[bool, typer.Option(help="Run the bundle's fp16 graphs.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads.")] = None,
    window: Annotated[int | None, typer.Option(min=64, help="Steps per model window.")] = None,
    overlap: Annotated[int, typer.Option(min=0, help="Overlap of windows, steps.")] = 256,
    batch: Annotated[int, typer.Option(min=1, help="Queries per model call.")] = 32,
    no_cache: Annotated[bool, typer.Option(help="Neither read nor write caches.")] = False,
    plot: Annotated[Path | None, typer.Option(help="PNG of the first query's score timeline "
                                              "with the moments found.")] = None,
    explain: Annotated[bool, typer.Option(help="Print the time spent per stage.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Search TARGET for each query and print the best moments."""
    t_start = time.perf_counter()
    from gazenlq.engine import RuntimeOptions, SearchEngine, SearchOptions
    from gazenlq.engine.search import answer_nlq
    from gazenlq.engine.search import search as run_search

    bundle = bundle or (Path(os.environ["GAZENLQ_BUNDLE"]) if os.environ.get("GAZENLQ_BUNDLE")
                        else None)
    if bundle is None:
        fail("--bundle: no bundle given (export one with gaze-export, or set GAZENLQ_BUNDLE)")
    stores = _stores(target) if not (queries_file and queries_file.suffix == ".json") else []
    texts = list(queries or [])
    nlq = None
    if queries_file is not None:
        if not queries_file.is_file():
            fail(f"{queries_file}: no such query file")
        if queries_file.suffix == ".json":
            from gazenlq.nlq.annotations import load_queries

            nlq = load_queries(queries_file)
        else:
            texts += [ln.strip() for ln in queries_file.read_text().splitlines() if ln.strip()]
    if not texts and nlq is None and not index:
        fail("no query: give QUERY arguments, --queries FILE or --index")
    if submission is not None and nlq is None:
        fail("--submission needs --queries with an Ego4D NLQ JSON file")
    engine = SearchEngine(bundle, RuntimeOptions(device.value, "fp16" if fp16 else "fp32",
                                                 threads),
                          SearchOptions(top_k=top_k, window=window, overlap=overlap,
                                        batch=batch, use_cache=not no_cache,
                                        write_cache=not no_cache))
    t_ready = time.perf_counter()
    if index:
        dummy = engine.encode_queries(["index"])
        for path in progress(stores, total=len(stores), desc="indexing", unit="video",
                             quiet=quiet):
            engine.scan(path, *dummy)
        if not texts:
            print(f"indexed {len(stores)} store(s) in {time.perf_counter() - t_start:.1f} s")
            return
    out: dict = {"bundle": str(bundle)}
    if nlq is not None:
        items = list(nlq.with_text())
        clips = len({q.clip_uid for q in items})
        bar = progress(range(clips), total=clips, desc="clips", unit="clip", quiet=quiet)
        it = iter(bar)
        entries = answer_nlq(engine, items, target, on_clip=lambda: next(it, None))
        if submission is not None:
            from gazenlq.nlq.submission import write_submission

            write_submission(submission, entries)
        out["entries"] = len(entries)
        if not as_json:
            print(f"answered {len(entries)} queries of {clips} clips"
                  + (f"; submission written to {submission}" if submission else ""))
    results = []
    if texts:
        bar = progress(range(len(stores)), total=len(stores), desc="videos", unit="video",
                       quiet=quiet)
        it = iter(bar)
        results = run_search(engine, stores, texts, timeline=plot is not None,
                             on_store=lambda: next(it, None))
        out["results"] = [{"query": r.query, "moments": [m.__dict__ for m in r.moments]}
                          for r in results]
    timing = {**engine.timings.as_dict(), "load": t_ready - t_start,
              "total": time.perf_counter() - t_start}
    if explain:
        out["timings"] = timing
    if as_json:
        print_json(out)
    else:
        for r in results:
            print(f"\n{r.query}")
            print_table(["rank", "video", "start-end", "score"],
                        [[i + 1, m.video, f"{_hms(m.start_s)}-{_hms(m.end_s)}",
                          f"{m.score:.3f}"] for i, m in enumerate(r.moments)])
        if explain:
            print("\ntime per stage (s):")
            print_table(["stage", "seconds"], [[k, f"{v:.4f}" if isinstance(v, float) else v]
                                               for k, v in timing.items()])
    if plot is not None and results:
        from gazenlq.engine.plot import timeline_png

        timeline_png(results[0], plot, engine)
    elif plot is not None and nlq is not None:
        _plot_nlq_query(engine, nlq, target, plot)


def _plot_nlq_query(engine, table, stores: Path, plot: Path) -> None:
    """Timeline of the annotation file's first answered query in its clip, with its
    ground-truth window."""
    import numpy as np

    from gazenlq.engine import Moment, QueryResult
    from gazenlq.engine.plot import timeline_png
    from gazenlq.store import FeatureStore

    q = next((q for q in table.with_text() if q.answer is not None), None)
    if q is None:
        fail("--plot: the query file has no answered query to draw")
    path = stores / f"{q.video_uid}.zarr"
    grid = FeatureStore.open(path).info.grid
    c0, c1 = q.clip_window
    first, stop = grid.clip_steps(c0, c1, FeatureStore.open(path).num_steps)
    tokens, tmask = engine.encode_queries([q.text])
    scan = engine.scan(path, tokens, tmask, start=first, stop=stop, timeline=True)
    moments = []
    for (s, e), score in scan.moments[0]:
        a, b = np.clip(grid.steps_to_clip(np.array([s, e]), c0, first), 0, c1 - c0)
        moments.append(Moment(q.clip_uid, float(a), float(b), float(score)))
    result = QueryResult(q.text, moments, {q.clip_uid: scan.timeline[0]})
    timeline_png(result, plot, engine, truth=q.answer,
                 seconds=lambda x: grid.steps_to_clip(x, c0, first))


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-search", argv)

