"""gaze-eval: score an Ego4D NLQ submission against ground truth with the official metric."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, make_app, print_json, print_table, run
from gazenlq.nlq.annotations import load_queries
from gazenlq.nlq.evaluation import (
    DEFAULT_KS,
    DEFAULT_THRESHOLDS,
    EvalResult,
    Example,
    evaluate,
    evaluate_by_template,
    examples,
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
    show: int = typer.Option(0, "--examples", min=0, help="Also print the first N queries' "
                             "top-1 answer beside the ground truth (hit: IoU > the first "
                             "--iou threshold)."),
    version: Annotated[bool, VERSION_OPTION] = False,
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
        if show:
            _print_examples(examples(entries, table, show, source=str(predictions)),
                            result.thresholds[0])
        _print_result(result, templates)


def _print_examples(found: list[Example], threshold: float) -> None:
    def window(w) -> str:
        return "-" if w is None else f"{w[0]:6.1f}-{w[1]:6.1f} s"

    print_table(["query", "answer (top 1)", "ground truth", "IoU", f"hit@{threshold:g}"],
                [[e.query, window(e.answer), window(e.truth), f"{e.iou:.2f}",
                  "hit" if e.hit(threshold) else "miss"] for e in found])
    hits = sum(e.hit(threshold) for e in found)
    print(f"{hits} of {len(found)} shown answers hit\n")


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
