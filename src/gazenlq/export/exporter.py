"""Checkpoint -> validated bundle, and re-validation of an existing bundle.

Everything is written into a temporary directory that replaces the bundle only when every
check passed (``atomic_dir``): a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from gazenlq.atomic import atomic_dir, write_json_atomic
from gazenlq.bundle import PostprocessConfig
from gazenlq.bundle.manifest import (
    MANIFEST,
    BundleError,
    GraphSpec,
    Manifest,
    bundle_file,
    file_entry,
    sha256_file,
    verify_bundle,
)
from gazenlq.bundle.trt import require_tensorrt
from gazenlq.errors import GazeNLQError
from gazenlq.export.fp16 import to_fp16
from gazenlq.export.graphs import GRAPHS, GraphDef, graph_defs, load_model
from gazenlq.export.onnx_export import OPSET, export_graph, io_problems
from gazenlq.export.tensorrt import TrtOptions, build_engines
from gazenlq.export.validate import (
    TOLERANCE,
    Agreement,
    Case,
    OrtBackend,
    ParityRow,
    TorchBackend,
    clip_cases,
    compare_backends,
    graph_parity,
    ort_session,
    random_cases,
)
from gazenlq.text import QueryTokenizer, build_text_encoder, load_tokenizer
from gazenlq.training.checkpoint import TIME_GRID
from gazenlq.training.checkpoint import time_grid as checkpoint_grid
from gazenlq.training.model import GazeNLQ

TOKENIZER = "tokenizer.json"
MIN_AGREEMENT = 0.99  # fp32 bundle vs PyTorch: identical top-5
# fp16 vs PyTorch, top-1 IoU >= 0.9 or a tie in the reference. Random clips have nearly
# flat scores that fp16 noise reorders (0.9-1.0 measured); there the gate only catches a
# broken conversion. Real queries (--queries) must agree on 98%.
MIN_FP16_TOP1 = {"given clips": 0.98, "random clips": 0.8}
LIBRARIES = ("gazenlq", "torch", "onnx", "onnxscript", "onnxruntime", "numpy")


@dataclass
class Report:
    """What an export or a check measured; ``problems`` empty means it passed."""

    bundle: Path
    parity: list[ParityRow] = field(default_factory=list)
    agreement: dict[str, Agreement] = field(default_factory=dict)
    case_source: str = ""
    checks: list[str] = field(default_factory=list)  # structural checks that passed
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def files(self) -> dict[str, int]:
        """Bundle files (engines included) and their sizes in bytes."""
        return {str(p.relative_to(self.bundle)): p.stat().st_size
                for p in sorted(self.bundle.rglob("*")) if p.is_file()}

    def to_dict(self) -> dict:
        return {"checks": self.checks,
                "parity": [{**asdict(r), "ok": r.ok} for r in self.parity],
                "agreement": {k: v.as_dict() for k, v in self.agreement.items()},
                "queries_from": self.case_source, "problems": self.problems}


class ValidationFailed(GazeNLQError):
    """The exported graphs do not reproduce PyTorch; carries the report."""

    def __init__(self, report: Report) -> None:
        more = len(report.problems) - 3
        super().__init__("validation failed, nothing written: " + "; ".join(report.problems[:3])
                         + (f" (+{more} more)" if more > 0 else ""))
        self.report = report


@dataclass(frozen=True)
class Gates:
    tolerance: float = TOLERANCE
    min_agreement: float = MIN_AGREEMENT
    min_fp16_top1: float | None = None  # None: MIN_FP16_TOP1 of the clips used


def _versions() -> dict[str, str]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return out


def _text(model: GazeNLQ) -> tuple[nn.Module, QueryTokenizer]:
    encoder = build_text_encoder(model.cfg.text)
    if encoder.dim != model.cfg.grounding.text_dim:
        raise GazeNLQError(f"the {model.cfg.text.name} text encoder gives {encoder.dim}-d "
                           f"features but the model was trained on {model.cfg.grounding.text_dim}")
    return encoder, load_tokenizer(model.cfg.text)


def validate(defs: dict[str, GraphDef], bundle: Path, files: dict[str, dict[str, str]],
             strides: Sequence[int], *, vocab: int, cases: list[Case] | None = None,
             gates: Gates = Gates(), threads: int = 0, seed: int = 0) -> Report:
    """Per-graph parity of the fp32 graphs, then end-to-end agreement of every precision
    (``files[precision][graph]``) with PyTorch on ``cases`` (default: random clips)."""
    rng = np.random.default_rng(seed)
    report = Report(bundle, case_source="given clips" if cases else "random clips")
    sessions = {p: {name: ort_session(bundle / f, threads) for name, f in fs.items()}
                for p, fs in files.items()}
    for name in GRAPHS:
        report.parity += graph_parity(defs[name], sessions["fp32"][name], rng, vocab=vocab,
                                      tolerance=gates.tolerance)
    report.problems += [f"{r.graph}.{r.output} at {r.size}: max abs diff {r.max_abs_diff:.3g} "
                        f"> {r.tolerance:g}" for r in report.parity if not r.ok]
    cases = cases or random_cases(defs, rng, vocab=vocab)
    report.agreement = compare_backends(TorchBackend(defs), {p: OrtBackend(s) for p, s in
                                                             sessions.items()}, cases, strides)
    fp32 = report.agreement["fp32"]
    if fp32.top5 < gates.min_agreement:
        report.problems.append(f"top-5 segments agree with PyTorch on {fp32.top5:.1%} of "
                               f"{fp32.queries} queries (< {gates.min_agreement:.0%})")
    fp16 = report.agreement.get("fp16")
    least = (MIN_FP16_TOP1[report.case_source] if gates.min_fp16_top1 is None
             else gates.min_fp16_top1)
    if fp16 is not None and fp16.top1_ties < least:
        report.problems.append(f"fp16 top-1 segments agree with fp32 on {fp16.top1_ties:.1%} "
                               f"of {fp16.queries} queries (< {least:.0%})")
    return report


def _manifest(model: GazeNLQ, conf: dict, checkpoint: Path, bundle: Path,
              graphs: dict[str, GraphDef], precisions: Sequence[str], report: Report,
              opset: int) -> Manifest:
    cfg = model.cfg
    g = cfg.grounding
    specs = {p: {name: GraphSpec(name, _file(d, p), p, d.inputs, d.outputs)
                 for name, d in graphs.items()} for p in precisions}
    names = [TOKENIZER, *(s.file for p in specs.values() for s in p.values())]
    return Manifest(
        variant=g.gaze, model=cfg.to_dict(),
        dims={"video_dim": g.video_dim, "text_dim": g.text_dim, "hidden": g.hidden,
              "gaze_dim": cfg.estimator.in_dim if model.gaze_source is not None else None},
        time_grid=checkpoint_grid(checkpoint, conf),  # the training stores' grid
        strides=g.strides, length_multiple=g.length_multiple, max_len=g.max_len,
        text={"encoder": cfg.text.name, "tokenizer": TOKENIZER,
              "max_tokens": cfg.text.max_tokens, "dim": g.text_dim},
        postprocess=PostprocessConfig(), graphs=specs,
        files={n: file_entry(bundle / n) for n in names},
        exporter={**_versions(), "opset": str(opset)},
        source={"checkpoint": str(checkpoint.resolve()), "epoch": conf.get("epoch"),
                "metrics": conf.get("metrics", {}),
                "weights_sha256": sha256_file(checkpoint / "model.safetensors")},
        validation=report.to_dict(),
        coarse=None if model.coarse is None else {
            "span": cfg.coarse.span, "dim": cfg.coarse.dim, "gaze": model.coarse.gaze},
        looked_at=None if model.semantic is None else {
            "dim": g.text_dim, "scale": float(model.semantic.scale),
            "objects": list(conf.get("looked_at", {}).get("objects", []))})


def _file(graph: GraphDef, precision: str) -> str:
    return graph.file if precision == "fp32" else f"{graph.name}_{precision}.onnx"


def export_bundle(checkpoint: Path, out: Path, *, fp16: bool = False,
                  trt: TrtOptions | None = None, cases: Callable[[QueryTokenizer, GazeNLQ],
                                                                 list[Case]] | None = None,
                  opset: int = OPSET, gates: Gates = Gates(), threads: int = 0,
                  log: Callable[[str], None] = lambda _: None) -> Report:
    """Export, validate and write the bundle ``out`` (atomically); raises ValidationFailed
    (nothing written) when a check fails. ``cases`` builds real validation clips."""
    if trt is not None:
        require_tensorrt()  # fail before any work
    checkpoint = Path(checkpoint)
    model, conf = load_model(checkpoint)
    checkpoint_grid(checkpoint, conf)  # refuse a checkpoint without its time grid up front
    if model.cfg.grounding.looked_at_feed:
        raise GazeNLQError(f"{checkpoint}: this model feeds the looked-at track into "
                           "grounding (gaze-train --feed-looked-at, an experiment the search "
                           "engine does not run); export a model trained without it")
    encoder, tokenizer = _text(model)
    defs = graph_defs(model, encoder)
    precisions = ["fp32", "fp16"] if fp16 else ["fp32"]
    checks = []
    with atomic_dir(out) as tmp:
        for name in GRAPHS:
            log(f"exporting the {name} graph (torch.onnx dynamo, opset {opset})")
            proto = export_graph(defs[name], opset=opset, max_text=encoder.max_positions)
            onnx.save(proto, tmp / defs[name].file)
            axes = sorted({a for s in defs[name].inputs for a in s.dynamic_axes.values()})
            checks.append(f"{defs[name].file}: I/O as specified, dynamic axes "
                          f"{', '.join(axes)} symbolic")
            if fp16:
                onnx.save(to_fp16(proto), tmp / _file(defs[name], "fp16"))
        shutil.copyfile(tokenizer.path, tmp / TOKENIZER)
        log("validating against PyTorch (onnxruntime, ORT_ENABLE_BASIC)")
        files = {p: {n: _file(d, p) for n, d in defs.items()} for p in precisions}
        report = validate(defs, tmp, files, model.cfg.grounding.strides,
                          vocab=tokenizer.vocab_size,
                          cases=cases(tokenizer, model) if cases else None,
                          gates=gates, threads=threads)
        report.checks = checks
        if not report.ok:
            raise ValidationFailed(report)
        manifest = _manifest(model, conf, checkpoint, tmp, defs, precisions, report, opset)
        write_json_atomic(tmp / MANIFEST, manifest.to_dict(), indent=1)
        if trt is not None:
            build_engines(tmp, trt, log)  # listed with the bundle's files
    report.bundle = Path(out)
    return report


def check_bundle(bundle: Path, checkpoint: Path | None = None, *,
                 cases: Callable[[QueryTokenizer, GazeNLQ], list[Case]] | None = None,
                 gates: Gates = Gates(), threads: int = 0,
                 log: Callable[[str], None] = lambda _: None) -> Report:
    """Re-validate ``bundle``: hashes, graph I/O against the manifest, and with a
    checkpoint the full parity and agreement checks."""
    bundle = Path(bundle)
    manifest = verify_bundle(bundle)
    checks = [f"{len(manifest.files)} files: sha256 as in {MANIFEST}"]
    for graphs in manifest.graphs.values():
        for spec in graphs.values():
            path = bundle_file(bundle, spec.file)
            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception as exc:  # onnx raises DecodeError and friends
                raise BundleError(f"{path}: not a readable ONNX graph "
                                  f"({type(exc).__name__})") from None
            problems = io_problems(model, spec.inputs, spec.outputs)
            if problems:
                raise BundleError(f"{path}: I/O differs from {MANIFEST}: {problems[0]}")
            checks.append(f"{spec.file}: I/O and named dynamic axes as in {MANIFEST}")
    report = Report(bundle)
    if checkpoint is not None:
        model, conf = load_model(Path(checkpoint))
        if json.loads(json.dumps(model.cfg.to_dict())) != manifest.model:
            raise BundleError(f"{checkpoint}: its model config differs from the bundle's; "
                              "check the checkpoint the bundle was exported from")
        grid = checkpoint_grid(Path(checkpoint), conf) if TIME_GRID in conf else None
        if grid is not None and grid != manifest.time_grid:
            raise BundleError(f"{checkpoint}: trained on time grid {grid}, the bundle's is "
                              f"{manifest.time_grid}; check the checkpoint the bundle was "
                              "exported from")
        encoder, _ = _text(model)
        tokenizer = QueryTokenizer(bundle_file(bundle, manifest.tokenizer),
                                   int(manifest.text["max_tokens"]))
        log("validating against PyTorch (onnxruntime, ORT_ENABLE_BASIC)")
        files = {p: {n: s.file for n, s in gs.items()} for p, gs in manifest.graphs.items()}
        report = validate(graph_defs(model, encoder), bundle, files, manifest.strides,
                          vocab=tokenizer.vocab_size,
                          cases=cases(tokenizer, model) if cases else None, gates=gates,
                          threads=threads)
    report.checks = checks
    return report


def nlq_cases(queries: Path, stores: Path) -> Callable[[QueryTokenizer, GazeNLQ], list[Case]]:
    """Validation clips from an Ego4D NLQ annotation file and its feature stores."""
    from gazenlq.nlq.annotations import load_queries
    from gazenlq.training.data import clip_items

    items = clip_items(load_queries(queries), stores)
    if not items:
        raise GazeNLQError(f"{queries}: no queries with text to validate on")

    def build(tokenizer: QueryTokenizer, model: GazeNLQ) -> list[Case]:
        return clip_cases(items, tokenizer, model.cfg.grounding.length_multiple,
                          model.gaze_source is not None)

    return build
