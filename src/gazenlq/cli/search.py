"""gaze-search: natural-language search over feature stores with an exported bundle (no torch)."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, fail, make_app, print_json, print_table, run
from gazenlq.engine.options import SearchOptions
from gazenlq.gaze.looked_at import THRESHOLD as LOOKED_AT_THRESHOLD
from gazenlq.progress import progress

app = make_app("Answer natural-language queries over a feature store or a directory of "
               "them, without PyTorch: gaze-search video.zarr 'where did I put the bulb' "
               "(with the default bundle, or --bundle BUNDLE).")


class Mode(str, Enum):
    auto = "auto"
    coarse = "coarse"
    exhaustive = "exhaustive"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"
    trt_native = "trt-native"


def _hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@app.command()
def search(
    target: Annotated[str, typer.Argument(help="A feature store (video.zarr) or a directory "
                                          "of stores searched as one library; or a URL "
                                          "(s3://bucket/video.zarr, s3://bucket/prefix: "
                                          "gazenlq[s3], credentials as for the AWS CLI).")],
    queries: Annotated[list[str] | None, typer.Argument(help="Questions in words.")] = None,
    bundle: Annotated[Path | None, typer.Option(help="Exported bundle (gaze-export); default "
                                                "$GAZENLQ_BUNDLE, else the default bundle "
                                                "(gaze-export --default; make demo "
                                                "installs one).")] = None,
    queries_file: Annotated[Path | None, typer.Option(
        "--queries", help="One query per line, or an Ego4D NLQ JSON (each query searched "
        "in its clip; stores looked up by video_uid in TARGET).")] = None,
    looked_at: Annotated[list[str] | None, typer.Option(
        help="When the wearer looked at this (a noun: 'bulb'; repeatable): the moments, "
        "merged fixation spans ranked across the library (bundles with a looked-at head: "
        "gaze-train --looked-at).")] = None,
    looked_at_threshold: Annotated[float, typer.Option(
        min=0.01, max=1.0, help="With --looked-at: the probability from which a step counts "
        "as looking at the noun.")] = LOOKED_AT_THRESHOLD,
    top_k: Annotated[int, typer.Option(min=1, help="Moments per query.")] = 5,
    submission: Annotated[Path | None, typer.Option(help="With an NLQ JSON: write the "
                                                    "official submission file here.")] = None,
    index: Annotated[bool, typer.Option(help="Build the per-video caches of TARGET ahead "
                                        "(no queries needed).")] = False,
    scheduler: Annotated[str | None, typer.Option(
        help="With --index: spread the stores over a Dask cluster (gazenlq[cluster]): "
        "local:N starts N local worker processes, else a scheduler address "
        "(tcp://host:8786; SLURM/PBS through dask-jobqueue, see docs/distributed.md).")
    ] = None,
    device: Annotated[Device, typer.Option(help="Execution provider.")] = Device.cpu,
    fp16: Annotated[bool, typer.Option(help="Run the bundle's fp16 graphs.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="ONNX Runtime threads.")] = None,
    window: Annotated[int | None, typer.Option(min=64, help="Steps per model window.")] = None,
    overlap: Annotated[int, typer.Option(min=0, help="Overlap of windows, steps.")] = 256,
    batch: Annotated[int, typer.Option(min=1, help="Queries per model call.")] = 32,
    mode: Annotated[Mode, typer.Option(help="coarse: the fine model only on the regions of "
                                       "each query's best coarse spans; exhaustive: on every "
                                       "window (the reference); auto: coarse wherever the "
                                       "bundle has a coarse stage and the target exceeds one "
                                       "window.")] = Mode.auto,
    candidates: Annotated[int, typer.Option(min=1, help="Coarse to fine: spans per query "
                                            "whose regions are grounded (M).")
                          ] = SearchOptions.candidates,
    context: Annotated[int, typer.Option(min=0, help="Coarse to fine: steps of context "
                                         "either side of a candidate span.")
                       ] = SearchOptions.context,
    ann_min_spans: Annotated[int | None, typer.Option(
        min=0, help="Coarse to fine: search the library's spans approximately (faiss, "
        "pip install 'gazenlq[ann]') from this many spans on; 0: always exact. Default: "
        "from the measured crossover when the extra is installed.")] = None,
    cache: Annotated[bool, typer.Option(help="Read and write the per-video caches in the "
                                        "stores (--no-cache: neither).")] = True,
    cache_dir: Annotated[Path | None, typer.Option(
        envvar="GAZENLQ_CACHE_DIR", help="Keep the per-video caches here instead of inside "
        "the stores (for stores on read-only mounts).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of the first query's score timeline "
                                              "with the moments found.")] = None,
    explain: Annotated[bool, typer.Option(help="Print the time spent per stage.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    version: Annotated[bool, VERSION_OPTION] = False,
) -> None:
    """Search TARGET for each query and print the best moments."""
    t_start = time.perf_counter()
    from gazenlq.bundle.default import resolve_bundle
    from gazenlq.engine import RuntimeOptions, SearchEngine
    from gazenlq.store import find_stores

    choice = resolve_bundle(bundle)
    texts = list(queries or [])
    nlq = None
    if queries_file is not None:
        if not queries_file.is_file():
            fail(f"{queries_file}: no such query file")
        from gazenlq.nlq.annotations import read_query_file

        read = read_query_file(queries_file)
        if isinstance(read, list):
            texts += read
        else:
            nlq = read
    nouns = list(looked_at or [])
    if not texts and nlq is None and not index and not nouns:
        fail("no query: give QUERY arguments, --queries FILE, --looked-at NOUN or --index")
    if submission is not None and nlq is None:
        fail("--submission needs --queries with an Ego4D NLQ JSON file")
    runtime = RuntimeOptions(device.value, "fp16" if fp16 else "fp32", threads)
    options = SearchOptions(top_k=top_k, window=window, overlap=overlap, batch=batch,
                            use_cache=cache, write_cache=cache, mode=mode.value,
                            candidates=candidates, context=context,
                            cache_dir=None if cache_dir is None else str(cache_dir),
                            ann_min_spans=ann_min_spans)
    if scheduler is not None:
        if not index or texts or nlq is not None or nouns:
            fail("--scheduler goes with --index alone (queries are answered in one process)")
        if not cache:
            fail("--scheduler builds the index: drop --no-cache")
        _index_on_cluster(scheduler, choice.path, find_stores(target), runtime, options,
                          quiet)
        return
    stores = find_stores(target) if texts or index or nouns else []
    engine = SearchEngine(choice, runtime, options)
    load_s = time.perf_counter() - t_start
    if index:
        bar = iter(progress(range(len(stores)), total=len(stores), desc="indexing",
                            unit="video", quiet=quiet))
        engine.index(stores, on_store=lambda: next(bar, None))
        if not texts and nlq is None and not nouns:
            print(f"indexed {len(stores)} store(s) in {time.perf_counter() - t_start:.1f} s")
            return
    out: dict = {"bundle": str(choice.path)}
    timings = []
    answered = None
    if nlq is not None:
        clips = len({q.clip_uid for q in nlq.with_text()})
        bar = iter(progress(range(clips), total=clips, desc="clips", unit="clip", quiet=quiet))
        answered = engine.answer_nlq(nlq, target, timeline=plot is not None,
                                     on_clip=lambda: next(bar, None))
        timings.append(answered.timings)
        if submission is not None:
            answered.write_submission(submission)
        out["entries"] = len(answered.entries)
        if not as_json:
            print(f"answered {len(answered.entries)} queries of {answered.clips} clips"
                  + (f"; submission written to {submission}" if submission else ""))
    results = []
    if texts:
        bar = iter(progress(range(len(stores)), total=len(stores), desc="videos",
                            unit="video", quiet=quiet))
        found = engine.search(stores, texts, timeline=plot is not None,
                              on_store=lambda: next(bar, None))
        timings.append(found.timings)
        results = found.results
        out["results"] = _as_json(results)
    looked = []
    if nouns:
        bar = iter(progress(range(len(stores)), total=len(stores), desc="looked at",
                            unit="video", quiet=quiet))
        found = engine.looked_at(stores, nouns, timeline=plot is not None,
                                 threshold=looked_at_threshold,
                                 on_store=lambda: next(bar, None))
        timings.append(found.timings)
        looked = found.results
        out["looked_at"] = _as_json(looked)
    timing = {k: sum(t.as_dict()[k] for t in timings) for k in timings[0].as_dict()}
    timing.update(load=load_s, total=time.perf_counter() - t_start)
    if explain:
        out["bundle_source"] = choice.source
        out["timings"] = timing
    if as_json:
        print_json(out)
    else:
        for title, r in [*((r.query, r) for r in results),
                         *((f"looked at {r.query!r}", r) for r in looked)]:
            print(f"\n{title}")
            print_table(["rank", "video", "start-end", "score"],
                        [[i + 1, m.video, f"{_hms(m.start_s)}-{_hms(m.end_s)}",
                          f"{m.score:.3f}"] for i, m in enumerate(r.moments)])
        if explain:
            print(f"\nbundle: {choice.describe()}")
            print("time per stage (s):")
            print_table(["stage", "seconds"], [[k, f"{v:.4f}" if isinstance(v, float) else v]
                                               for k, v in timing.items()])
    if plot is not None:
        _plot(plot, results, answered, looked)


def _index_on_cluster(scheduler: str, bundle: Path, stores: list, runtime, options,
                      quiet: bool) -> None:
    """--index --scheduler: the stores as tasks on a Dask cluster (engine.cluster)."""
    from gazenlq.engine.cluster import connect, index_library, worker_runtime

    bar = iter(progress(range(len(stores)), total=len(stores), desc="indexing", unit="video",
                        quiet=quiet))
    with connect(scheduler) as client:
        report = index_library(client, bundle, stores, options=options,
                               runtime=worker_runtime(runtime, scheduler),
                               on_store=lambda: next(bar, None))
    print(f"indexed {len(report.indexed)} store(s), {len(report.present)} already indexed, "
          f"on {report.workers} worker(s) in {report.seconds:.1f} s")


def _as_json(results) -> list[dict]:
    return [{"query": r.query, "moments": [m.__dict__ for m in r.moments]} for r in results]


def _plot(path: Path, results, answered, looked) -> None:
    """The first text query's timeline (with the first --looked-at noun's track), else the
    first noun's track, else the annotation file's first answered query's timeline in its
    clip with its ground-truth window."""
    from gazenlq.engine.plot import timeline_png

    if results or looked:
        timeline_png(results[0] if results else looked[0], path,
                     looked_at=looked[0] if results and looked else None,
                     looked_at_only=not results)
        return
    for q, result in zip(answered.queries, answered.results):
        if q.answer is not None:
            timeline_png(result, path, truth=q.answer)
            return
    fail("--plot: the query file has no answered query to draw")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-search", argv, flags={"queries": "QUERY", "target": "TARGET"},
        fast_exit=True)

