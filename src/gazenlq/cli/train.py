"""gaze-train: train the GazeNLQ models on feature stores (one run, or a variants x seeds table)."""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gazenlq.cli.common import VERSION_OPTION, fail, make_app, print_json, print_table, run

app = make_app("Train GazeNLQ on feature stores: stage 1 the gaze estimator (InfoNCE + KL on "
               "ground-truth gaze maps), stage 2 the grounding model with gaze (GazeNLQ), "
               "negative gaze (GazeNLQ*), none (GroundNLQ baseline) or uniform gaze (the "
               "control: cell features without the gaze); gaze_reg trains attention pooling "
               "of the cell features towards the gaze (Gaze-VLM: no gaze or stage 1 at "
               "inference), gaze_pool the same without the regulariser. Checkpoints are "
               "safetensors + JSON, written atomically; --resume continues a killed run. On "
               "several processes (DDP: gloo on CPU, NCCL on GPU): torchrun --nproc-per-node "
               "N -m gazenlq.cli.train DATA -o OUT ...")


class Preset(str, Enum):
    small = "small"
    paper = "paper"


class Fusion(str, Enum):
    early = "early"
    late = "late"


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"--seeds: expected comma-separated integers, got {text!r}")
        raise


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="EgoSim dataset directory (gaze-synth OUT), or "
                                        "a directory (or URL prefix, s3://bucket/stores) of "
                                        "stores with --train/--val/--test.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    preset: Annotated[Preset, typer.Option(help="Model/training preset.")] = Preset.small,
    variants: Annotated[str, typer.Option(
        help="Comma-separated: none, gaze, neg_gaze, uniform_gaze, gaze_reg, "
        "gaze_pool.")] = "gaze",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    train_ann: Annotated[Path | None, typer.Option("--train", help="Train NLQ JSON.")] = None,
    val_ann: Annotated[Path | None, typer.Option("--val", help="Val NLQ JSON.")] = None,
    test_ann: Annotated[Path | None, typer.Option("--test", help="Test NLQ JSON.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Override stage-2 epochs.")] = None,
    stage1_epochs: Annotated[int | None, typer.Option(min=1, help="Override stage-1 "
                                                      "epochs.")] = None,
    gaze_reg_weight: Annotated[float | None, typer.Option(
        min=0, help="Lambda of gaze_reg's KL(P_gaze || A) attention regulariser (default "
        "100, Gaze-VLM's).")] = None,
    looked_at: Annotated[Path | None, typer.Option(
        help="Also train the semantic gaze-target head (what the wearer looked at, searched "
        "by gaze-search --looked-at) on this looked-at file; an EgoSim dataset has one in "
        "annotations/looked_at.json.")] = None,
    semantic_weight: Annotated[float, typer.Option(
        min=0, help="With --looked-at: weight of the head's InfoNCE loss.")] = 1.0,
    feed_looked_at: Annotated[bool, typer.Option(
        help="With --looked-at: feed the head's looked-at track into the grounding model's "
        "query gate.")] = False,
    fusion: Annotated[Fusion | None, typer.Option(
        help="Where the query meets the video: early (GroundNLQ; the paper preset's) or "
        "late (SnAG: the pyramid cached per video, a light per-query head, 3-4x faster "
        "search; the small preset's). Default: the preset's.")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Data-loading worker processes.")] = 0,
    jobs: Annotated[int, typer.Option(min=1, help="Runs trained at once, each in its own "
                                      "process with an equal share of the cores (2 suits a "
                                      "2-core CPU; progress bars off).")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N; "
                                        "CUDA trains in mixed precision.")] = "auto",
    report: Annotated[Path | None, typer.Option(help="Write the results table (Markdown) "
                                                "here, e.g. docs/results.md.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue interrupted runs in OUT.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON results.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars or epoch lines.")] = False,
    version: Annotated[bool, VERSION_OPTION] = False,
) -> None:
    """Train every variant x seed into OUT/<variant>-s<seed>/ and print the test metrics."""
    from gazenlq.training.config import GAZE_VARIANTS
    from gazenlq.training.config import preset as get_preset
    from gazenlq.training.experiment import run_table
    from gazenlq.training.run import DataPaths

    names = [v.strip() for v in variants.split(",") if v.strip()]
    for v in names:
        if v not in GAZE_VARIANTS:
            fail(f"--variants: unknown variant {v!r} (expected {', '.join(GAZE_VARIANTS)})")
    if feed_looked_at and looked_at is None:
        fail("--feed-looked-at: the looked-at track needs --looked-at FILE")
    late = (fusion.value if fusion is not None
            else get_preset(preset.value).grounding.fusion) == "late"
    if feed_looked_at and late:
        fail("--feed-looked-at enters through early fusion's query gate, and this run is "
             + ("late (--fusion late)" if fusion is not None
                else f"late (the {preset.value} preset's)") + ": train with --fusion early")
    from gazenlq.store.remote import location

    stores = location(data)
    if isinstance(stores, Path) and not stores.is_dir():
        fail(f"{data}: not a directory")
    if train_ann or val_ann:
        if not (train_ann and val_ann):
            fail("--train and --val go together")
        paths = DataPaths(stores, train_ann, val_ann, test_ann)
    elif isinstance(stores, str):
        fail(f"{data}: stores at a URL need --train and --val annotation files")
    else:
        data = stores
        paths = DataPaths.egosim(data)
        for p in (paths.stores, paths.train, paths.val):
            if not p.exists():
                fail(f"{p}: missing (is {data} a gaze-synth dataset? else pass --train/--val)")
    if looked_at is not None:
        if not looked_at.is_file():
            fail(f"{looked_at}: no such looked-at file")
        paths = replace(paths, looked_at=looked_at)
    from gazenlq.training import distributed
    from gazenlq.training.device import resolve_device

    # fail before any work when the device is missing
    cuda = resolve_device(device).type == "cuda"
    if distributed.launched() and jobs > 1:
        fail("--jobs runs separate trainings; under torchrun every process trains the same "
             "run (drop --jobs)")
    distributed.init_from_env(cuda)
    cfg = replace(get_preset(preset.value), workers=workers, device=device)
    if epochs is not None:
        cfg = replace(cfg, stage2=replace(cfg.stage2, epochs=epochs,
                                          warmup_epochs=min(cfg.stage2.warmup_epochs, epochs)))
    if gaze_reg_weight is not None:
        cfg = replace(cfg, pool=replace(cfg.pool, weight=gaze_reg_weight))
    if fusion is not None:
        cfg = replace(cfg, grounding=replace(cfg.grounding, fusion=fusion.value))
    if looked_at is not None:
        cfg = replace(cfg, semantic=replace(cfg.semantic, enabled=True, weight=semantic_weight),
                      grounding=replace(cfg.grounding, looked_at_feed=feed_looked_at))
    if stage1_epochs is not None:
        cfg = replace(cfg, stage1=replace(cfg.stage1, epochs=stage1_epochs,
                                          warmup_epochs=min(cfg.stage1.warmup_epochs,
                                                            stage1_epochs)))
    t0 = time.perf_counter()
    table = run_table(cfg, paths, out, variants=names, seeds=_ints(seeds), resume=resume,
                      quiet=quiet, preset=preset.value, jobs=jobs)
    table["seconds"] = round(time.perf_counter() - t0, 1)
    extra = [*(["--jobs", str(jobs)] if jobs > 1 else []),
             *(["--epochs", str(epochs)] if epochs else []),
             *(["--stage1-epochs", str(stage1_epochs)] if stage1_epochs else []),
             *(["--gaze-reg-weight", str(gaze_reg_weight)]
               if gaze_reg_weight is not None else []),
             *(["--looked-at", _published(looked_at, data), "--semantic-weight",
                str(semantic_weight)] if looked_at is not None else []),
             *(["--feed-looked-at"] if feed_looked_at else []),
             *(["--fusion", fusion.value] if fusion is not None else [])]
    # The command as a report can publish it: DATA and RUN stand for this machine's paths.
    table["data"], table["out"] = str(data), str(out)
    table["command"] = shlex.join(["gaze-train", "DATA", "--out", "RUN", "--preset",
                                   preset.value, "--variants", variants, "--seeds", seeds,
                                   *extra])
    if not distributed.is_main():
        return  # rank 0 reports
    if report is not None:
        from gazenlq.training.experiment import write_report

        write_report(table, report)
    if as_json:
        print_json(table)
        return
    metrics = ("R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU")
    print_table(["variant", "seeds", *[f"test {m}" for m in metrics]],
                [[r["variant"], len(r["seeds"]), *[f"{r['mean'][m]:.2f} ± {r['std'][m]:.2f}"
                                                   for m in metrics]]
                 for r in table["rows"]])
    print(f"\n{json.dumps({'runs': str(out), 'minutes': round(table['seconds'] / 60, 1)})}")


def main(argv: list[str] | None = None) -> None:
    try:
        run(app, "gaze-train", argv)
    finally:
        if os.environ.get("WORLD_SIZE", "1") != "1":  # started by torchrun
            from gazenlq.training.distributed import shutdown

            shutdown()


if __name__ == "__main__":  # torchrun --nproc-per-node N -m gazenlq.cli.train ...
    main()


def _published(path: Path, data: Path) -> str:
    """``path`` as a report shows it: under DATA when inside the dataset, else its name."""
    try:
        return str(Path("DATA") / path.resolve().relative_to(data.resolve()))
    except ValueError:
        return path.name
