"""gaze-search: not built yet; it says so plainly (exit 2) instead of pretending."""

from __future__ import annotations

from typing import Annotated

import typer

from gazenlq.cli.common import make_app, not_yet, run

app = make_app(
    "Answer natural-language queries over a feature store or a directory of them, without "
    "PyTorch, for example: gaze-search video.zarr 'where did I put the bulb'. Not implemented "
    "yet: arrives with issue 7 (the streaming search engine)."
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def search(args: Annotated[list[str] | None, typer.Argument(help="Arguments.")] = None) -> None:
    """Answer natural-language queries over a feature store or a directory of them, without
    PyTorch, for example: gaze-search video.zarr 'where did I put the bulb'."""
    not_yet("gaze-search", "issue 7 (the streaming search engine)")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-search", argv)
