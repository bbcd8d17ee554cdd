"""gaze-eval: score an Ego4D NLQ submission against ground truth with the official metric."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import typer

from gazenlq.cli.common import make_app, print_json, print_table, run
from gazenlq.nlq.annotations import load_queries
from gazenlq.nlq.evaluation import (
    DEFAULT_KS,
    DEFAULT_THRESHOLDS,
    EvalResult,
    evaluate,
    evaluate_by_template,
)
from gazenlq.nlq.submission import load_submission

app = make_app("Score an Ego4D NLQ submission file (Recall@K at IoU thresholds, mIoU).")


@app.command()
def evaluate_command(
    predictions: Path = typer.Argument(..., help="Submission JSON (ego4d_nlq_challenge 1.0)."),
    ground_truth: Path = typer.Argument(..., help="Ego4D NLQ annotation JSON with answers."),
    k: list[int] = typer.Option(None, "--k", help="Recall@K cut-off; repeatable [1, 5]."),
    iou: list[float] = typer.Option(None, "--iou", help="IoU threshold; repeatable [0.3, 0.5]."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object, not a table."),
    by_template: bool = typer.Option(False, "--by-template", help="Add one row per query "
                                     "template (JSON: a 'templates' object)."),
) -> None:
    """Validate PREDICTIONS, evaluate it against GROUND_TRUTH and print the scores.

    Percentages over the submitted entries, as the official evaluator computes them;
    ground-truth queries without a prediction and duplicate entries are warned about on
    stderr.
    """
    entries = load_submission(predictions)
    table = load_queries(ground_truth)
    settings = {"ks": k or DEFAULT_KS, "thresholds": iou or DEFAULT_THRESHOLDS,
                "source": str(predictions)}
    result = evaluate(entries, table, **settings)
    templates = evaluate_by_template(entries, table, **settings) if by_template else {}
    for warning in result.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    if as_json:
        out = result.to_dict()
        if by_template:
            out["templates"] = {name: r.to_dict() for name, r in templates.items()}
        print_json(out)
    else:
        _print_result(result, templates)


def _print_result(result: EvalResult, templates: dict[str, EvalResult]) -> None:
    names = [result.recall_name(k, t) for k, t in result.recall]

    def row(r: EvalResult) -> list:
        return [*(f"{v:.2f}" for v in r.recall.values()), f"{r.miou:.2f}", r.num_entries]

    rows = [row(result)]
    if templates:
        rows = [["all", *rows[0]], *([name, *row(r)] for name, r in templates.items())]
        names = ["template", *names]
    print_table([*names, "mIoU", "entries"], rows)


def main(argv: Sequence[str] | None = None) -> None:
    run(app, "gaze-eval", argv)
