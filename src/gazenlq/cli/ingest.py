"""gaze-ingest: not built yet; it says so plainly (exit 2) instead of pretending."""

from __future__ import annotations

from typing import Annotated

import typer

from gazenlq.cli.common import make_app, not_yet, run

app = make_app(
    "Bring Ego4D downloads in: pre-extracted .pt feature files and gaze CSVs become per-video "
    "feature stores. Not implemented yet: arrives with issue 4 (Ego4D ingest)."
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ingest(args: Annotated[list[str] | None, typer.Argument(help="Arguments.")] = None) -> None:
    """Bring Ego4D downloads in: pre-extracted .pt feature files and gaze CSVs become per-video
    feature stores."""
    not_yet("gaze-ingest", "issue 4 (Ego4D ingest)")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-ingest", argv)
