"""gaze-ingest: Ego4D .pt feature files (+ gaze CSVs) -> per-video feature stores."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, make_app, print_json, print_table, run
from gazenlq.progress import progress

app = make_app(
    "Bring Ego4D downloads in: pre-extracted .pt feature files of several extractors (and "
    "optional gaze CSVs) become one feature store per video, OUT/<uid>.zarr. Sources of a "
    "video may differ by a few steps (truncated to the shortest); a rerun skips finished "
    "stores. See docs/feature-store.md, section Ingest."
)


class Dtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


@app.command()
def ingest(
    video_source: Annotated[list[str], typer.Option(
        "--video-source", metavar="NAME=DIR",
        help="Grounding features (e.g. egovlp=DIR of <uid>.pt); repeat to concatenate, in "
             "order, into video_features.")],
    gaze_source: Annotated[list[str], typer.Option(
        "--gaze-source", metavar="NAME=DIR",
        help="Gaze-estimator features (e.g. omnivore=DIR); repeatable, into gaze_features.")],
    out: Annotated[Path, typer.Option(help="Output directory: one OUT/<uid>.zarr per video.")],
    gaze_dir: Annotated[Path | None, typer.Option(
        help="Ego4D gaze CSVs <video_uid>.csv: ground-truth gaze maps for those videos.")]
    = None,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Rewrite every store, even current ones.")]
    = False,
    max_length_diff: Annotated[int, typer.Option(
        min=0, help="Most steps by which a video's sources may differ.")] = 2,
    dtype: Annotated[Dtype, typer.Option(help="Stored float type.")] = Dtype.float16,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    version: Annotated[bool, VERSION_OPTION] = False,
) -> None:
    """Ingest Ego4D .pt features (one <uid>.pt per source directory) and optional gaze CSVs
    into OUT/<uid>.zarr. A video's sources are truncated to the shortest (refused beyond
    --max-length-diff steps); a rerun skips finished stores and redoes interrupted ones."""
    from gazenlq.ingest import Source, plan_ingest, run_jobs

    t0 = time.perf_counter()
    work, known = plan_ingest([Source.parse(s) for s in video_source],
                              [Source.parse(s) for s in gaze_source], out, gaze_dir=gaze_dir,
                              overwrite=overwrite, dtype=dtype.value,
                              max_length_diff=max_length_diff)
    bar = iter(progress(range(len(work)), total=len(work), desc="videos", unit="video",
                        quiet=quiet))
    done = run_jobs(work, workers=jobs, on_video=lambda _: next(bar, None))
    results = sorted([*known, *done], key=lambda r: r.video_uid)
    seconds = time.perf_counter() - t0
    counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "missing")}
    if as_json:
        print_json({"out": str(out), "seconds": round(seconds, 2), **counts,
                    "videos": [r.to_dict() for r in results]})
        return
    print_table(["video", "steps", "Dv", "Dg", "gaze", "status"],
                [[r.video_uid, r.steps if r.steps is not None else "-",
                  r.video_dim or "-", r.gaze_dim or "-",
                  "-" if r.status == "missing" else "yes" if r.gaze else "no",
                  r.status + (f" ({', '.join(r.missing_sources)})" if r.missing_sources else "")]
                 for r in results])
    print(f"\n{counts['written']} written, {counts['skipped']} skipped, {counts['missing']} "
          f"missing a source, under {out} in {seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-ingest", argv)
