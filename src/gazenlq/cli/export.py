"""gaze-export: training checkpoint -> validated ONNX bundle (+ fp16, TensorRT engines)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, fail, make_app, print_json, print_table, run

if TYPE_CHECKING:
    from collections.abc import Callable

    from gazenlq.export.exporter import Report

app = make_app(
    "Export a training checkpoint (a run's stage2/best) to a bundle that runs without "
    "PyTorch: ONNX graphs for the text encoder, the per-video half (video + gaze estimator) "
    "and the per-query half of the grounding model, the tokenizer and manifest.json. Every "
    "export is validated against PyTorch (onnxruntime parity per output, top-5 agreement "
    "after decoding + Soft-NMS) and nothing is written if a check fails. --fp16 adds a "
    "half-precision variant, --trt builds TensorRT engines (GPU), --check re-validates an "
    "existing bundle."
)


def _log(quiet: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


def _print_report(report: Report, *, bundle_written: bool) -> None:
    for check in report.checks:
        print(f"ok: {check}")
    if report.checks:
        print()
    if report.parity:
        print("parity: onnxruntime (ORT_ENABLE_BASIC) vs PyTorch, max abs diff over valid "
              "positions; size = batch x length [x text length]")
        print_table(["graph", "output", "size", "max abs diff", "tolerance", "ok"],
                    [[r.graph, r.output, r.size, f"{r.max_abs_diff:.2e}", f"{r.tolerance:g}",
                      "yes" if r.ok else "NO"] for r in report.parity])
        print()
    if report.agreement:
        print(f"end to end: decode + Soft-NMS vs PyTorch on {report.case_source}")
        print_table(["precision", "queries", "top-5 identical", "top-5 IoU>=0.9",
                     "top-1 IoU>=0.9", "top-1 or tie"],
                    [[p, a.queries, f"{a.top5:.1%}", f"{a.top5_iou:.1%}", f"{a.top1:.1%}",
                      f"{a.top1_ties:.1%}"]
                     for p, a in report.agreement.items()])
        print()
    if bundle_written:
        files = report.files()
        print_table(["file", "size"], [[f, _mb(n)] for f, n in files.items()]
                    + [["total", _mb(sum(files.values()))]])
        print()


@app.command()
def export(
    checkpoint: Annotated[Path | None, typer.Argument(
        help="Checkpoint directory (a run's stage2/best). With --trt and no -o it may be an "
             "existing bundle to build engines for.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle directory to write "
                                             "(replaced atomically).")] = None,
    check: Annotated[Path | None, typer.Option(
        "--check", help="Re-validate this bundle (hashes, graph I/O) instead of exporting.")]
    = None,
    against: Annotated[Path | None, typer.Option(
        "--checkpoint", help="With --check: also re-run the parity and agreement checks "
                             "against this checkpoint.")] = None,
    fp16: Annotated[bool, typer.Option(help="Also write a half-precision variant "
                                       "(*_fp16.onnx; LayerNorm and softmax in fp32).")]
    = False,
    trt: Annotated[bool, typer.Option(help="Build TensorRT engines into BUNDLE/tensorrt/fp32 "
                                      "(and fp16 with --fp16; needs tensorrt and an NVIDIA "
                                      "GPU).")] = False,
    trt_min_length: Annotated[int | None, typer.Option(
        min=1, help="Profile min length in steps [default: the length multiple].")] = None,
    trt_opt_length: Annotated[int | None, typer.Option(
        min=1, help="Profile opt length [default: min(1024, max length)].")] = None,
    trt_max_length: Annotated[int | None, typer.Option(
        min=1, help="Profile max length: the longest --window gaze-search may use "
                    "[default: the bundle's max length].")] = None,
    trt_opt_batch: Annotated[int | None, typer.Option(
        min=1, help="Profile opt batch [default: min(8, max batch)].")] = None,
    trt_max_batch: Annotated[int | None, typer.Option(
        min=1, help="Profile max batch: rows per engine call, larger calls are split "
                    "[default: gaze-search's --batch default].")] = None,
    trt_workspace_gib: Annotated[float, typer.Option(min=0.1, help="Builder workspace.")]
    = 4.0,
    queries: Annotated[Path | None, typer.Option(
        help="Ego4D NLQ JSON (e.g. a val split) whose queries the end-to-end check uses "
             "instead of random clips; needs --stores.")] = None,
    stores: Annotated[Path | None, typer.Option(help="Feature stores of --queries.")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Max abs diff per fp32 output.")]
    = 1e-4,
    min_agreement: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Min share of queries with identical top-5.")] = 0.99,
    min_fp16_agreement: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Min share of queries whose fp16 top-1 agrees [default: 0.98 "
                               "with --queries, 0.8 on random clips].")] = None,
    opset: Annotated[int, typer.Option(min=18, help="ONNX opset.")] = 18,
    threads: Annotated[int, typer.Option(min=0, help="onnxruntime threads (0: all).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress lines on stderr.")] = False,
    default: Annotated[bool, typer.Option(
        "--default", help="Make the bundle the user's default, the one gaze-search runs when "
        "given none (without -o the export is written there; CHECKPOINT may also be an "
        "existing bundle to install).")] = False,
    version: Annotated[bool, VERSION_OPTION] = False,
) -> None:
    """Export CHECKPOINT to the bundle -o BUNDLE, validated; or --check BUNDLE."""
    from gazenlq.bundle.default import default_bundle_dir, install_default
    from gazenlq.bundle.manifest import MANIFEST, verify_bundle
    from gazenlq.export.exporter import (
        Gates,
        ValidationFailed,
        check_bundle,
        export_bundle,
        nlq_cases,
    )
    from gazenlq.export.tensorrt import TrtOptions, build_engines

    if (queries is None) != (stores is None):
        fail("--queries and --stores go together")
    cases = nlq_cases(queries, stores) if queries is not None else None
    gates = Gates(tolerance=tolerance, min_agreement=min_agreement,
                  min_fp16_top1=min_fp16_agreement)
    log = _log(quiet)
    if check is not None:
        if checkpoint is not None or out is not None or trt:
            fail("--check BUNDLE takes no CHECKPOINT, -o or --trt (--checkpoint CKPT adds "
                 "the parity checks)")
        report = check_bundle(check, against, cases=cases, gates=gates, threads=threads,
                              log=log)
        _finish(report, check, written=False, as_json=as_json)
        return
    if checkpoint is None:
        fail("give a CHECKPOINT to export (with -o BUNDLE) or --check BUNDLE")
    if default and out is None and not trt and (checkpoint / MANIFEST).is_file():
        verify_bundle(checkpoint)
        print(f"default bundle: {install_default(checkpoint)} (a copy of {checkpoint})")
        return
    trt_options = TrtOptions(min_length=trt_min_length, opt_length=trt_opt_length,
                             max_length=trt_max_length, opt_batch=trt_opt_batch,
                             max_batch=trt_max_batch, fp16=fp16,
                             workspace_gib=trt_workspace_gib) if trt else None
    if trt_options is not None and out is None and (checkpoint / MANIFEST).is_file():
        for path in build_engines(checkpoint, trt_options, log):
            print(f"{path}  {_mb(path.stat().st_size)}")
        return
    if out is None and default:
        out = default_bundle_dir()
    if out is None:
        fail("-o/--out BUNDLE (or --default) is required to export a checkpoint")
    try:
        report = export_bundle(checkpoint, out, fp16=fp16, trt=trt_options, cases=cases,
                               opset=opset, gates=gates, threads=threads, log=log)
    except ValidationFailed as exc:
        _print_report(exc.report, bundle_written=False)
        raise
    if default and out != default_bundle_dir():
        install_default(out)
    _finish(report, out, written=True, as_json=as_json,
            default=default_bundle_dir() if default else None)


def _finish(report: Report, bundle: Path, *, written: bool, as_json: bool,
            default: Path | None = None) -> None:
    """Print the report and the next command to run (or fail on problems)."""
    next_command = ('gaze-search STORE "query"' if default is not None
                    else f'gaze-search STORE "query" --bundle {bundle}')
    if as_json:
        print_json({**report.to_dict(), "bundle": str(bundle),
                    "default": None if default is None else str(default),
                    "files": report.files() if written else {}, "next": next_command})
    else:
        _print_report(report, bundle_written=written)
    if not report.ok:
        fail(f"{bundle}: " + "; ".join(report.problems))
    if as_json:
        return
    if written:
        print(f"bundle written: {bundle}")
    else:
        print(f"bundle checked: {bundle} (hashes and graph I/O match the manifest"
              + (", parity with the checkpoint holds)" if report.parity else ")"))
    if default is not None:
        print(f"default bundle: {default}")
    print(f"next: {next_command}")


def main(argv: list[str] | None = None) -> None:
    run(app, "gaze-export", argv)
