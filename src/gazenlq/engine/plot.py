"""PNG timeline of a query's scores over a video, with the moments found."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gazenlq.engine.results import QueryResult, Timeline
from gazenlq.errors import MissingDependencyError


def timeline_png(result: QueryResult, path: Path, truth: tuple[float, float] | None = None,
                 *, looked_at: QueryResult | None = None, looked_at_only: bool = False
                 ) -> None:
    """Plot the best video's score timeline (``result.timelines``) against time, shade the
    returned moments (and the ground truth, when known) and save a PNG. ``looked_at`` (a
    ``SearchEngine.looked_at`` result) adds its looked-at track of that video;
    ``looked_at_only``: ``result`` itself is one (its curve is the looked-at track)."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("timeline plots need matplotlib: pip install "
                                     "'gazenlq[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not result.moments:
        return
    video = result.moments[0].video
    line = result.timelines.get(video, Timeline(np.zeros(0), np.zeros(0)))
    t, curve = line.seconds, line.score
    fig, ax = plt.subplots(figsize=(11, 3))
    ax.plot(t / 60, curve, lw=0.8, color="0.3", label=(
        "looked-at probability" if looked_at_only else "score (best level-0 point)"))
    other = looked_at.timelines.get(video) if looked_at is not None else None
    if other is not None:
        ax.plot(other.seconds / 60, other.score, lw=0.8, color="tab:blue",
                label=f"looked at {looked_at.query!r}")
    for rank, m in enumerate(result.moments):
        if m.video != video:
            continue
        ax.axvspan(m.start_s / 60, m.end_s / 60, color="tab:orange", alpha=0.35,
                   label="moments found" if rank == 0 else None)
        ax.text(m.start_s / 60, 1.02, str(rank + 1), fontsize=8, color="tab:orange")
    if truth is not None:
        ax.axvspan(truth[0] / 60, truth[1] / 60, color="tab:green", alpha=0.3,
                   label="ground truth")
    ax.set_xlabel("minutes")
    ax.set_ylim(0, 1.08)
    what = f"looked at {result.query!r}" if looked_at_only else repr(result.query)
    ax.set_title(f"{what} in {video}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
