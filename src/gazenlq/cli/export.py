"""gaze-export: not built yet; it says so plainly (exit 2) instead of pretending."""

from __future__ import annotations

from typing import Annotated

import typer

from gazenlq.cli.common import make_app, not_yet, run

app = make_app(
    "Export a training checkpoint to a validated ONNX bundle that runs without PyTorch "
    "(--fp16 for half precision), or to TensorRT engines (--trt); --check re-validates an "
    "existing bundle. Not implemented yet: arrives with issue 6 (ONNX and TensorRT export)."
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def export(args: Annotated[list[str] | None, typer.Argument(help="Arguments.")] = None) -> None:
    """Export a training checkpoint to a validated ONNX bundle that runs without PyTorch (--fp16
    for half precision), or to TensorRT engines (--trt); --check re-validates an existing
    bundle."""
    not_yet("gaze-export", "issue 6 (ONNX and TensorRT export)")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-export", argv)
