"""The time of one stage-2 training step (small preset, random batches of the trainer's
shapes) in one process or, under torchrun, in several with DDP and the global batch
shared out (bench_cluster runs it). Rank 0 prints the timing as JSON.

    [torchrun --nproc-per-node N] python -m benchmarks.ddp_step WINDOWS QUERIES REPEAT THREADS
"""

from __future__ import annotations

import json
import sys

import torch

from benchmarks.bench_train import Case, grounding_batch
from benchmarks.common import measure
from benchmarks.models import config
from gazenlq.training import distributed
from gazenlq.training.device import Precision
from gazenlq.training.model import GazeNLQ
from gazenlq.training.run import grounding_step
from gazenlq.training.targets import PositiveNormaliser
from gazenlq.training.trainer import optimizer, train_step


def main() -> None:
    windows, queries, repeat, threads = map(int, sys.argv[1:5])
    group = distributed.init_from_env(cuda=False)
    world, rank = (group.world, group.rank) if group else (1, 0)
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    cfg = config("small", video_dim=256, gaze_dim=512)
    torch.manual_seed(0)
    model = GazeNLQ(cfg).train()
    norm = PositiveNormaliser()

    def step(m, b):
        return grounding_step(m, b, norm)

    if group is not None:
        net = distributed.wrap(model, step, cpu)

        def step(_, b):  # the same step, through DDP
            return net(b)

    batch = grounding_batch(cfg, Case("small", "cpu", 256, windows // world, queries, repeat),
                            cpu, torch.Generator().manual_seed(rank))
    opt = optimizer(model, cfg.stage2)
    amp = Precision.for_device(cpu)
    t = measure(lambda: train_step(model, batch, step, opt, amp, cfg.stage2.clip_grad),
                repeat=repeat, warmup=1)
    if rank == 0:
        print(json.dumps({"processes": world, "median_s": t.median, "p10_s": t.p10,
                          "p90_s": t.p90, "runs": t.runs,
                          "threads_per_process": torch.get_num_threads()}))
    distributed.shutdown()


if __name__ == "__main__":
    main()
