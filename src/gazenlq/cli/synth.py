"""gaze-synth: generate an EgoSim dataset (feature stores + Ego4D NLQ annotations)."""

from __future__ import annotations

import time
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, fail, make_app, print_json, print_table, run
from gazenlq.progress import progress

app = make_app("Generate EgoSim, a synthetic egocentric world: one Zarr feature store per "
               "recording session and Ego4D NLQ JSON annotations (train/val/test) under OUT. "
               "Deterministic by --seed; a rerun resumes an interrupted generation.")


class Level(str, Enum):
    easy = "easy"
    default = "default"
    hard = "hard"


class Scope(str, Enum):
    clip = "clip"
    session = "session"


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output directory (created).")],
    sessions: Annotated[int, typer.Option(min=1, help="Recording sessions to generate.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed of the whole dataset.")] = 0,
    difficulty: Annotated[Level, typer.Option(help="Difficulty preset.")] = Level.default,
    clutter: Annotated[float | None, typer.Option(min=0, help="Override: mean distractors "
                                                   "visible beside the handled object.")] = None,
    noise: Annotated[float | None, typer.Option(min=0, help="Override: feature noise std.")] = None,
    drift: Annotated[float | None, typer.Option(min=0, help="Override: slow drift std.")] = None,
    gaze_off: Annotated[float | None, typer.Option(min=0, max=1, help="Override: chance a "
                                                    "fixation misses the handled object.")] = None,
    text_align: Annotated[float | None, typer.Option(min=0, max=1, help="Override: share of "
                                                      "each feature direction aligned with "
                                                      "the text embedding of its name.")]
    = None,
    boundary: Annotated[float | None, typer.Option(min=0, help="Override: annotators' "
                                                    "disagreement with the event on the "
                                                    "answer window (centre shift std and "
                                                    "log length spread, in event lengths); "
                                                    "0: the window is the event.")] = None,
    hours: Annotated[float | None, typer.Option(min=0.05, help="Fixed session length in hours "
                                                "(long-video benchmarks).")] = None,
    query_scope: Annotated[Scope, typer.Option(help="clip: Ego4D's layout (queries per "
                                               "clip); session: one clip per session with "
                                               "answers unique in the whole session "
                                               "(long-video benchmarks).")] = Scope.clip,
    session_queries: Annotated[int, typer.Option(min=1, help="Queries per session with "
                                                 "--query-scope session.")] = 100,
    gaze_fraction: Annotated[float, typer.Option(min=0, max=1, help="Share of sessions with "
                                                 "ground-truth gaze maps.")] = 0.5,
    video_dim: Annotated[int, typer.Option(min=8, help="Grounding feature width Dv.")] = 256,
    cell_dim: Annotated[int, typer.Option(min=2, help="Per-cell width of the 4x4 spatial "
                                          "gaze-estimator features (Dg = 16 x this).")] = 32,
    fps: Annotated[float, typer.Option(min=0.001, help="Time grid of the stores: video "
                                       "frame rate (default: Ego4D's grid, 32-frame windows "
                                       "every 16 frames at 30 fps).")] = 30.0,
    window: Annotated[int, typer.Option(min=1, help="Time grid: frames per feature step.")]
    = 32,
    stride: Annotated[int, typer.Option(min=1, help="Time grid: frames between steps.")] = 16,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    version: Annotated[bool, VERSION_OPTION] = False,
) -> None:
    """Generate (or finish generating) an EgoSim dataset under OUT."""
    from gazenlq.nlq.annotations import load_queries
    from gazenlq.synth.config import DIFFICULTIES, EgoSimConfig
    from gazenlq.synth.dataset import SPLITS, generate
    from gazenlq.synth.stats import nlq_stats
    from gazenlq.timegrid import TimeGrid

    if out.exists() and not out.is_dir():
        fail(f"{out}: exists and is not a directory")
    diff = DIFFICULTIES[difficulty.value]
    overrides = {k: v for k, v in (("clutter", clutter), ("noise", noise), ("drift", drift),
                                   ("gaze_off", gaze_off), ("text_align", text_align),
                                   ("boundary", boundary))
                 if v is not None}
    cfg = EgoSimConfig(seed=seed, sessions=sessions, video_dim=video_dim, cell_dim=cell_dim,
                       gaze_fraction=gaze_fraction, session_hours=hours,
                       query_scope=query_scope.value, session_queries=session_queries,
                       difficulty=replace(diff, **overrides),
                       grid=TimeGrid(fps=fps, window=window, stride=stride))
    t0 = time.perf_counter()
    bar = progress(range(sessions), total=sessions, desc="sessions", unit="session",
                   quiet=quiet)
    it = iter(bar)
    manifest = generate(cfg, out, jobs=jobs, on_session=lambda: next(it, None))
    seconds = time.perf_counter() - t0
    rows, summary = [], {"out": str(out), "seconds": round(seconds, 2),
                         "fingerprint": manifest["fingerprint"],
                         "time_grid": manifest["config"]["grid"], "splits": {}}
    for split in SPLITS:
        table = load_queries(out / "annotations" / f"nlq_{split}.json")
        n_sessions = sum(s["split"] == split for s in manifest["sessions"])
        stats = nlq_stats(table) if len(table) else None
        summary["splits"][split] = {"sessions": n_sessions,
                                    **(stats.to_dict() if stats else {})}
        rows.append([split, n_sessions, stats.clips if stats else 0, len(table),
                     f"{stats.answer_median_s:.1f}" if stats else "-",
                     f"{stats.clip_median_s:.0f}" if stats else "-"])
    if as_json:
        print_json(summary)
        return
    print_table(["split", "sessions", "clips", "queries", "answer median s",
                 "clip median s"], rows)
    print(f"\nwrote {out} in {seconds:.1f} s; inspect a store with: gaze-store info "
          f"{out / manifest['sessions'][0]['store']}")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-synth", argv)
