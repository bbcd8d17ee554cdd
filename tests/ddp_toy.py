"""A toy stage (a small MLP, a per-item mean loss) trained by ``trainer.run``: in one
process, or in several under ``torchrun`` (tests/test_distributed.py). Each process
records, in ``OUT/writes-rank<R>``, every checkpoint and log it writes.

Usage: ``python tests/ddp_toy.py OUT EPOCHS BATCH [--stop-after E] [--resume] [--cuda]``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from gazenlq.training import checkpoint, distributed, trainer
from gazenlq.training.config import OptimConfig

ITEMS = 29  # with batches of 7: a last batch of one item, which leaves a rank without any


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("epochs", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("--stop-after", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--cuda", action="store_true", help="NCCL and one GPU per process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    distributed.init_from_env(cuda=args.cuda)
    rank = int(os.environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)
    record = args.out / f"writes-rank{rank}"

    def recorded(fn):
        def wrapper(path, *a, **k):
            with record.open("a") as f:
                f.write(f"{Path(path).name}\n")
            return fn(path, *a, **k)
        return wrapper

    checkpoint.save = recorded(checkpoint.save)
    trainer._write_log = recorded(trainer._write_log)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(ITEMS, 6, generator=g), torch.randn(ITEMS, 2, generator=g)
    data = [{"x": x[i], "y": y[i]} for i in range(ITEMS)]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 2))

    def step(m: nn.Module, b: dict) -> dict[str, torch.Tensor]:
        return {"loss": ((m(b["x"]) - b["y"]) ** 2).mean()}

    def validate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            d = next(m.parameters()).device
            return {"mse": float(((m(x.to(d)) - y.to(d)) ** 2).mean())}

    stage = trainer.Stage(
        name="toy", model=model, dataset=data, collate=None, step=step, validate=validate,
        optim=OptimConfig(lr=1e-2, epochs=args.epochs, warmup_epochs=1,
                          batch_size=args.batch, ema_decay=0.9),
        score="mse", higher_is_better=False, config={"kind": "toy"},
        items_per_batch=lambda b: len(b["x"]),
        device=torch.device("cuda" if args.cuda else "cpu"))
    trainer.run(stage, args.out, resume=args.resume, quiet=True,
                stop_after_epoch=args.stop_after)


if __name__ == "__main__":
    main()
