"""The training loop shared by both stages: AdamW (decay on weights only), linear warm-up +
cosine, gradient clipping, EMA, per-epoch validation, atomic checkpoints, exact resume; on
the CPU or on CUDA with mixed precision (``gazenlq.training.device``), in one process or
in several under DDP (``gazenlq.training.distributed``: batches sharded per rank, rank 0
validates and writes)."""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from gazenlq.atomic import write_json_atomic
from gazenlq.progress import progress
from gazenlq.training import checkpoint, distributed
from gazenlq.training.config import OptimConfig
from gazenlq.training.device import Precision, to_device


class EMA:
    """Exponential moving average of a model's floating-point state."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}
        self._average = get_ema_multi_avg_fn(decay)  # one foreach lerp over all tensors

    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        self._average(list(self.shadow.values()), [state[k] for k in self.shadow], None)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: self.shadow.get(k, v) for k, v in model.state_dict().items()}

    def copy_of(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the averaged weights, in eval mode."""
        twin = copy.deepcopy(model)
        twin.load_state_dict(self.state_dict(model))
        return twin.eval()


def optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices / kernels only (not biases, norms, scales)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                             fused=True)


def schedule(opt: torch.optim.Optimizer, warmup: int, total: int
             ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class Stage:
    """What differs between stages: model, data, one training step, validation."""

    name: str
    model: nn.Module
    optim: OptimConfig
    dataset: torch.utils.data.Dataset
    collate: Callable[[list], Any] | None
    step: Callable[[nn.Module, Any], dict[str, torch.Tensor]]
    validate: Callable[[nn.Module], dict[str, float]]
    score: str
    higher_is_better: bool
    config: dict[str, Any]
    items_per_batch: Callable[[Any], int] = len
    extra_state: Callable[[], dict] = field(default=lambda: {})
    load_extra_state: Callable[[dict], None] = field(default=lambda d: None)
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


def train_step(model: nn.Module, batch: Any,
               step: Callable[[nn.Module, Any], dict[str, torch.Tensor]],
               opt: torch.optim.Optimizer, amp: Precision, clip_grad: float,
               weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One optimizer step: losses under autocast, (scaled) backward of ``weight`` x the
    loss, clipping, update."""
    with amp.autocast():
        losses = step(model, batch)
    opt.zero_grad(set_to_none=True)
    amp.scaler.scale(losses["loss"] * weight if weight != 1.0 else losses["loss"]).backward()
    amp.scaler.unscale_(opt)
    groups = model.clip_groups() if hasattr(model, "clip_groups") else [model.parameters()]
    for group in groups:
        torch.nn.utils.clip_grad_norm_(group, clip_grad)
    amp.scaler.step(opt)
    amp.scaler.update()
    return losses


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def run(stage: Stage, out: Path, *, resume: bool = False, quiet: bool = False,
        stop_after_epoch: int | None = None) -> list[dict]:
    """Train ``stage`` into ``out`` (``last/``, ``best/``, ``metrics.jsonl``, ``curves.png``).

    With ``resume`` the run continues from ``out/last`` exactly (weights, EMA, optimizer,
    schedule, RNG, data order). ``stop_after_epoch`` ends early (used to test resumption).
    Returns the per-epoch history. Under torchrun (a process group, see
    ``training.distributed``) every rank takes its share of each batch and rank 0 alone
    validates and writes.
    """
    cfg, device = stage.optim, stage.device
    group = distributed.current()
    main = group is None or group.rank == 0
    quiet = quiet or not main
    if group is not None and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    model = stage.model.to(device)
    amp = Precision.for_device(device)
    n = len(stage.dataset)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    opt = optimizer(model, cfg)
    sched = schedule(opt, steps_per_epoch * cfg.warmup_epochs, total)
    ema = EMA(model, cfg.ema_decay)
    history: list[dict] = []
    start_epoch, best = 0, None
    if resume and (out / "last" / "state").is_dir():
        st = checkpoint.load_resume(out / "last")
        model.load_state_dict(st["raw"])
        ema.shadow = {k: v.to(device) for k, v in checkpoint.load_weights(out / "last").items()
                      if k in ema.shadow}
        checkpoint.unflatten_optimizer(opt, st["optim"], st["trainer"]["optim"])
        sched.load_state_dict(st["trainer"]["sched"])
        _set_rng_state(st["rng"], device)
        if st["trainer"].get("scaler"):  # empty when saved without loss scaling
            amp.scaler.load_state_dict(st["trainer"]["scaler"])
        history, best = st["trainer"]["history"], st["trainer"]["best"]
        start_epoch = st["trainer"]["epoch"] + 1
        stage.load_extra_state(st["trainer"]["extra"])
    else:
        torch.manual_seed(cfg.seed)
    step = stage.step
    if group is not None:
        net = distributed.wrap(model, stage.step, device)

        def step(_: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
            return net(batch)
    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(stage.dataset, "set_epoch"):
            stage.dataset.set_epoch(epoch)
        order = _epoch_order(n, cfg.seed, epoch)
        batches = [order[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        real = [True] * len(batches)
        if group is not None:
            batches, real = map(list, zip(*(distributed.shard(b, group) for b in batches)))
        loader = torch.utils.data.DataLoader(
            stage.dataset, batch_sampler=batches,
            collate_fn=stage.collate, num_workers=stage.workers,
            persistent_workers=False, pin_memory=device.type == "cuda")
        model.train()
        sums: dict[str, float] = {}
        items, t0 = 0, time.perf_counter()
        bar = progress(loader, total=steps_per_epoch, desc=f"{stage.name} {epoch + 1}/"
                       f"{cfg.epochs}", unit="batch", quiet=quiet)
        for has_items, batch in zip(real, bar):
            n_items = stage.items_per_batch(batch) if has_items else 0
            weight = 1.0
            if group is not None:  # this rank's share of the whole batch's items
                total = distributed.all_sum(n_items, device)
                if total == 0:
                    continue
                weight = group.world * n_items / total
                batch = to_device(batch, device) if n_items else None
                n_items = int(total) if main else n_items  # rank 0 reports the whole batch
            elif n_items == 0:
                continue  # e.g. stage-2 windows without any answer
            else:
                batch = to_device(batch, device)
            losses = train_step(model, batch, step, opt, amp, cfg.clip_grad, weight)
            sched.step()
            ema.update(model)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            items += n_items
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}",
                                rate=f"{items / (time.perf_counter() - t0):.1f}/s")
        seconds = time.perf_counter() - t0
        if main:  # validation and every write: rank 0 only
            metrics = stage.validate(ema.copy_of(model))
            row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "seconds": seconds,
                   "device": str(device), "precision": amp.name,
                   "items_per_s": items / seconds,
                   **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
                   **{f"val_{k}": v for k, v in metrics.items()}}
            history.append(row)
            score = metrics[stage.score]
            improved = best is None or (score > best if stage.higher_is_better else score < best)
            if improved:
                best = score
            weights = ema.state_dict(model)
            conf = {**stage.config, "epoch": epoch + 1, "metrics": metrics}
            if improved:
                checkpoint.save(out / "best", config=conf, weights=weights)
            optim_tensors, optim_meta = checkpoint.flatten_optimizer(opt)
            checkpoint.save(out / "last", config=conf, weights=weights, resume={
                "raw": model.state_dict(), "optim": optim_tensors,
                "rng": _rng_state(device),
                "trainer": {"epoch": epoch, "history": history, "best": best,
                            "optim": optim_meta, "sched": sched.state_dict(),
                            "scaler": amp.scaler.state_dict(), "extra": stage.extra_state()}})
            _write_log(out, history)
            if not quiet:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                  if k.startswith(("train_loss", "val_")))
                print(f"{stage.name} epoch {epoch + 1}/{cfg.epochs}: {shown} "
                      f"({seconds:.0f} s, {row['items_per_s']:.1f} items/s)", file=sys.stderr)
        distributed.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return history


def _write_log(out: Path, history: list[dict]) -> None:
    """metrics.jsonl (one line per epoch) and curves.png (if matplotlib is installed)."""
    tmp = out / ".metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    tmp.replace(out / "metrics.jsonl")
    write_json_atomic(out / "history.json", history, indent=1)
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    keys_train = [k for k in history[-1] if k.startswith("train_")]
    keys_val = [k for k in history[-1] if k.startswith("val_")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k in keys_train:
        axes[0].plot(epochs, [r.get(k) for r in history], marker="o", label=k[6:])
    for k in keys_val:
        axes[1].plot(epochs, [r.get(k) for r in history], marker="o", label=k[4:])
    axes[0].set_title("training losses")
    axes[1].set_title("validation")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp_png = out / ".curves.tmp.png"
    fig.savefig(tmp_png, dpi=100)
    plt.close(fig)
    tmp_png.replace(out / "curves.png")
