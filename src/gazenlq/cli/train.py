"""gaze-train: not built yet; it says so plainly (exit 2) instead of pretending."""

from __future__ import annotations

from typing import Annotated

import typer

from gazenlq.cli.common import make_app, not_yet, run

app = make_app(
    "Train the GazeNLQ models on feature stores: stage 1, the gaze estimator (InfoNCE + KL on "
    "ground-truth gaze maps); stage 2, the gaze-augmented grounding model and its no-gaze and "
    "negative-gaze baselines. Writes safetensors checkpoints with their JSON config. Not "
    "implemented yet: arrives with issue 5 (models and training)."
)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(args: Annotated[list[str] | None, typer.Argument(help="Arguments.")] = None) -> None:
    """Train the GazeNLQ models on feature stores: stage 1, the gaze estimator (InfoNCE + KL on
    ground-truth gaze maps); stage 2, the gaze-augmented grounding model and its no-gaze and
    negative-gaze baselines. Writes safetensors checkpoints with their JSON config."""
    not_yet("gaze-train", "issue 5 (models and training)")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-train", argv)
