"""The accuracy table: variants x seeds on one dataset, with a prior-only baseline.

One stage-1 estimator per seed serves all the estimator's gaze variants (the attention-pooling
variants and the baseline need none); the text features are computed
once. The runs are jobs (stage 1 of a seed, then its gaze variants; the baselines at any
time) that ``jobs`` worker processes share, each with an equal share of the cores: small
models on a CPU use one core far better than two. Results go to ``<out>/table.json`` and,
on request, a Markdown report.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gazenlq.atomic import write_json_atomic
from gazenlq.nlq.annotations import QueryTable, load_queries
from gazenlq.nlq.evaluation import evaluate
from gazenlq.nlq.submission import Entry
from gazenlq.training import distributed
from gazenlq.training.config import ESTIMATOR_VARIANTS, TrainConfig
from gazenlq.training.data import TextFeatures
from gazenlq.training.run import DataPaths, data_grid, load_text, train, train_stage1
from gazenlq.workers import process_pool, stopped_on_error

METRICS = ("R1@0.3", "R1@0.5", "R5@0.3", "R5@0.5", "mIoU")


def prior_baseline(train_table: QueryTable, test_table: QueryTable, k: int = 5) -> dict:
    """Best prior-only predictor: the ``k`` most common (relative centre, length) cells of
    the training answers (10 centre bins x 8 log-length bins), the same for every query."""
    cells: Counter[tuple[int, int]] = Counter()
    lengths: dict[tuple[int, int], list[float]] = {}
    for q in train_table:
        if q.answer is None:
            continue
        dur = q.clip_window[1] - q.clip_window[0]
        a, b = q.answer
        cell = (min(int((a + b) / 2 / dur * 10), 9),
                int(np.clip(np.floor(np.log2(max(b - a, 1e-3))) + 2, 0, 7)))
        cells[cell] += 1
        lengths.setdefault(cell, []).append(b - a)
    top = [(c, float(np.median(lengths[c]))) for c, _ in cells.most_common(k)]
    entries = []
    for q in test_table:
        dur = q.clip_window[1] - q.clip_window[0]
        wins = []
        for (centre_bin, _), length in top:
            centre = (centre_bin + 0.5) / 10 * dur
            wins.append((max(0.0, centre - length / 2), min(dur, centre + length / 2)))
        entries.append(Entry(q.clip_uid, q.annotation_uid, q.query_idx, tuple(wins)))
    res = evaluate(entries, test_table)
    out = {res.recall_name(kk, t): v for (kk, t), v in res.recall.items()}
    out["mIoU"] = res.miou
    return out


@dataclass(frozen=True)
class Job:
    """One unit of the table: stage 1 of a seed, or stage 2 (+ test) of a variant."""

    name: str
    variant: str
    seed: int
    run_dir: Path
    after: str | None = None
    """The stage-1 job whose estimator this one uses (its checkpoint: ``estimator``)."""
    estimator: Path | None = None

    @property
    def is_stage1(self) -> bool:
        return self.name.startswith("stage1-")


def plan(variants: list[str], seeds: list[int], out: Path) -> list[Job]:
    """The jobs in priority order: stage 1 first (the gaze runs wait for it), baselines
    last. Stage 1 lives in the first estimator variant's run directory; only the
    ``ESTIMATOR_VARIANTS`` need it."""
    first, stage2 = [], []
    gaze = [v for v in variants if v in ESTIMATOR_VARIANTS]
    for seed in seeds:
        if gaze:
            owner = out / f"{gaze[0]}-s{seed}"
            first.append(Job(f"stage1-s{seed}", gaze[0], seed, owner))
        for v in variants:
            needs = v in ESTIMATOR_VARIANTS
            stage2.append(Job(f"{v}-s{seed}", v, seed, out / f"{v}-s{seed}",
                              f"stage1-s{seed}" if needs else None,
                              owner / "stage1" / "best" if needs else None))
    return first + sorted(stage2, key=lambda j: j.variant == "none")


def run_job(job: Job, cfg: TrainConfig, data: DataPaths, text: TextFeatures, resume: bool,
            quiet: bool) -> dict | None:
    """Run one job (in this process); stage-2 jobs return their results."""
    if job.is_stage1:
        if not (resume and (job.run_dir / "results.json").is_file()):
            train_stage1(cfg, data, job.run_dir, variant=job.variant, seed=job.seed,
                         text_dim=text.dim, resume=resume, quiet=quiet)
        return None
    results = job.run_dir / "results.json"
    if resume and results.is_file():
        return json.loads(results.read_text())
    return train(cfg, data, job.run_dir, variant=job.variant, seed=job.seed, resume=resume,
                 quiet=quiet, estimator_ckpt=job.estimator, text=text)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_parallel(todo: list[Job], jobs: int, args: tuple, quiet: bool
                  ) -> dict[str, dict | None]:
    """Run ``todo`` on ``jobs`` processes, starting each job once its stage 1 is done."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    results: dict[str, dict | None] = {}
    running: dict[Future, Job] = {}
    t0 = time.perf_counter()
    with process_pool(jobs, _init_worker, (threads,)) as pool, stopped_on_error(pool):
        while todo or running:
            for job in [j for j in todo if j.after is None or j.after in results]:
                if len(running) >= jobs:
                    break
                todo.remove(job)
                running[pool.submit(run_job, job, *args)] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                results[job.name] = fut.result()
                if not quiet:
                    print(f"{job.name} done at {(time.perf_counter() - t0) / 60:.1f} min",
                          file=sys.stderr, flush=True)
    return results


def run_table(cfg: TrainConfig, data: DataPaths, out: Path, *, variants: list[str],
              seeds: list[int], resume: bool, quiet: bool, preset: str, jobs: int = 1) -> dict:
    """Train every variant x seed (skipping finished runs when resuming) and summarise;
    ``jobs`` > 1 runs that many jobs at once in worker processes (progress bars off)."""
    tables = [load_queries(p) for p in (data.train, data.val, data.test) if p]
    data_grid(data, tables)  # stores on two time grids fail here, before any work
    text = load_text(cfg, tables)
    todo = plan(variants, seeds, out)
    if jobs > 1:
        done = _run_parallel(todo, jobs, (cfg, data, text, resume, True), quiet)
    else:
        done = {job.name: run_job(job, cfg, data, text, resume, quiet) for job in todo}
    runs = [done[f"{v}-s{seed}"] for seed in seeds for v in variants]
    split = "test" if data.test else "val"
    rows = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        values = {m: [r[split][m] for r in mine] for m in METRICS}
        rows.append({"variant": variant, "seeds": [r["seed"] for r in mine],
                     "mean": {m: float(np.mean(v)) for m, v in values.items()},
                     "std": {m: float(np.std(v)) for m, v in values.items()},
                     "runs": values, "stage1": [r.get("stage1") for r in mine],
                     "attention": [_attention(r) for r in mine],
                     "parameters": mine[0]["parameters"]})
    eval_table = tables[2] if data.test else tables[1]
    table = {"preset": preset, "split": split, "rows": rows,
             "prior_baseline": prior_baseline(tables[0], eval_table),
             "config": cfg.to_dict(), "data": str(data.stores if isinstance(data.stores, str)
                                         else data.stores.parent),
             "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "machine": f"{platform.processor() or platform.machine()}, "
                        f"Python {platform.python_version()}"}
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "table.json", table, indent=1)
    return table


def _attention(run: dict) -> dict | None:
    """The attention-vs-gaze figures (val, best checkpoint) of a pooling run, else None."""
    found = {k: v for k, v in run.get("val", {}).items() if k.startswith("attn_")}
    return found or None


NAMES = {"none": "no gaze (GroundNLQ baseline)", "gaze": "GazeNLQ",
         "neg_gaze": "GazeNLQ* (negative gaze)",
         "uniform_gaze": "uniform gaze (control: cell features, no gaze)",
         "gaze_reg": "gaze-regularised attention pooling (Gaze-VLM; no gaze at inference)",
         "gaze_pool": "attention pooling, unregularised (control for gaze_reg)"}


def write_report(table: dict, path: Path) -> None:
    """Markdown report of :func:`run_table`'s result."""
    split = table["split"]
    lines = [f"# EgoSim accuracy ({table['preset']} preset)", "",
             f"Official Ego4D NLQ metrics on the EgoSim {split} split, mean ± std over seeds "
             f"{table['rows'][0]['seeds']}. Generated by `gaze-train --report`"
             + (f"; reproduce with `{table['command']}`, DATA a `gaze-synth` dataset and "
                "RUN the run directory (README.md, 'Accuracy')." if "command" in table else "."),
             "",
             "| model | R1@0.3 | R1@0.5 | R5@0.3 | R5@0.5 | mIoU |", "|---|---|---|---|---|---|"]
    for r in table["rows"]:
        cells = [f"{r['mean'][m]:.2f} ± {r['std'][m]:.2f}" for m in METRICS]
        lines.append(f"| {NAMES.get(r['variant'], r['variant'])} | " + " | ".join(cells) + " |")
    base = table["prior_baseline"]
    lines.append("| prior only (5 most common windows) | "
                 + " | ".join(f"{base[m]:.2f}" for m in METRICS) + " |")
    gaze_rows = [r for r in table["rows"] if r["variant"] in ESTIMATOR_VARIANTS]
    if gaze_rows:
        lines += ["", "## Stage 1: gaze estimator (val, fixation steps)", "",
                  "| seed | KL (lower is better) | CC | centre-bias KL | centre-bias CC |",
                  "|---|---|---|---|---|"]
        for seed, s1 in zip(gaze_rows[0]["seeds"], gaze_rows[0]["stage1"]):
            if s1:
                lines.append(f"| {seed} | {s1['kl']:.3f} | {s1['cc']:.3f} | "
                             f"{s1['centre_bias_kl']:.3f} | {s1['centre_bias_cc']:.3f} |")
    pooled = [(r, s, a) for r in table["rows"]
              for s, a in zip(r["seeds"], r.get("attention", [])) if a]
    if pooled:
        lines += ["", "## Attention pooling vs gaze (val, fixation steps, 4 x 4 cells)", "",
                  "| model | seed | KL (lower is better) | CC | uniform-attention KL |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {s} | {a['attn_kl']:.3f} | {a['attn_cc']:.3f} | "
                  f"{a['attn_uniform_kl']:.3f} |" for r, s, a in pooled]
    lines += ["", "## Per-seed values", ""]
    for r in table["rows"]:
        lines.append(f"- {NAMES.get(r['variant'], r['variant'])}: R1@0.3 "
                     + ", ".join(f"{v:.2f}" for v in r["runs"]["R1@0.3"])
                     + f" ({r['parameters'] / 1e6:.2f} M grounding parameters)")
    lines += ["", f"Run {table['date']} on {table['machine']}, {table['seconds'] / 60:.1f} "
              "minutes in all." if "seconds" in table else f"Run {table['date']}.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
