"""Multi-process training with PyTorch DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc-per-node N -m gazenlq.cli.train ...`` starts N processes with the usual
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
:func:`init_from_env` joins them into one process group - NCCL on CUDA (one GPU per
process, ``cuda:LOCAL_RANK``), gloo on the CPU. The trainer then gives every rank its
share of each global batch (:func:`shard`: the same batches as one process, items dealt
round-robin) and weights each rank's loss by its share of the batch's items, so that
DDP's gradient average is the gradient of the whole batch: for losses that are means over
items, N processes take exactly the steps one process takes. Everything written -
checkpoints, metrics, caches, reports - is written by rank 0 (:func:`is_main`) while the
others wait at a barrier.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Group:
    """This process's place in the process group."""

    rank: int
    world: int
    local_rank: int


STORE_FD = "GAZENLQ_STORE_FD"
"""Set by :func:`run_local` on every rank: for rank 0 a socket already listening on
127.0.0.1, which the process group's store serves on; -1 on the others (clients)."""


def run_local(nproc: int, *target: str, env: dict[str, str] | None = None,
              timeout: float = 600, cwd: str | os.PathLike | None = None
              ) -> subprocess.CompletedProcess:
    """Run ``target`` (a script, or ``-m`` and a module, then its arguments) as ``nproc``
    ranks of one process group on this machine: the environment ``torchrun
    --nproc-per-node`` gives, without torchrun's agent, whose store listens on every
    address. Rank 0's store serves on a socket bound here to 127.0.0.1 and inherited
    (:data:`STORE_FD`); gloo runs on ``lo``. Bounded by ``timeout`` seconds; a failing rank
    stops the others. Returns rank 0's stdout, every rank's stderr and the first failing
    rank's code (0 when all succeed)."""
    base = {**(os.environ if env is None else env), "MASTER_ADDR": "127.0.0.1",
            "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
            "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, *target]
    with socket.socket() as listener, ExitStack() as files:
        listener.bind(("127.0.0.1", 0))
        listener.listen(nproc)
        base["MASTER_PORT"] = str(listener.getsockname()[1])
        outs = [(files.enter_context(tempfile.TemporaryFile("w+")),
                 files.enter_context(tempfile.TemporaryFile("w+"))) for _ in range(nproc)]
        procs = [subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=err, text=True,
            pass_fds=(listener.fileno(),) if rank == 0 else (),
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank),
                 STORE_FD: str(listener.fileno() if rank == 0 else -1)})
            for rank, (out, err) in enumerate(outs)]
        listener.close()  # rank 0 holds its own copy
        code = _wait_all(procs, time.monotonic() + timeout)
        texts = []
        for out, err in outs:
            out.seek(0)
            err.seek(0)
            texts.append((out.read(), err.read()))
    stderr = "".join(f"--- rank {r} ---\n{err}" for r, (_, err) in enumerate(texts))
    return subprocess.CompletedProcess(cmd, code, texts[0][0], stderr)


def _wait_all(procs: list[subprocess.Popen], deadline: float) -> int:
    """Wait for every process; at the first failure or the deadline, kill the rest.
    Returns the first non-zero return code (-9 for a timeout), else 0."""
    while None in [p.poll() for p in procs]:  # a list: every process polled
        failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            return failed[0] if failed else -9
        time.sleep(0.05)
    return next((p.returncode for p in procs if p.returncode), 0)


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(cuda: bool) -> Group | None:
    """Join the process group torchrun (or :func:`run_local`) set up (NCCL when ``cuda``,
    else gloo); None when this is a single process."""
    import torch.distributed as dist

    if not launched():
        return None
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl" if cuda else "gloo"
        if STORE_FD in os.environ:  # run_local: rank 0 serves on its loopback socket
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            fd = int(os.environ[STORE_FD])
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  world, is_master=rank == 0,
                                  master_listen_fd=fd if rank == 0 else None)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return current()


def current() -> Group | None:
    """The process group this process belongs to, if any."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return Group(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main() -> bool:
    """Whether this process writes (rank 0, or a single process)."""
    group = current()
    return group is None or group.rank == 0


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun process)."""
    import torch.distributed as dist

    if current() is not None:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    import torch.distributed as dist

    if current() is not None:
        dist.barrier()


def shard(batch: list[int], group: Group) -> tuple[list[int], bool]:
    """This rank's items of one global batch (round-robin), and whether it has any. A rank
    left without items gets the batch's first one as a stand-in (a DataLoader cannot load
    an empty batch), to be stepped with zero weight."""
    mine = batch[group.rank::group.world]
    return (mine, True) if mine else (batch[:1], False)


def all_sum(value: float, device: torch.device) -> float:
    """``value`` summed over the ranks."""
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item())


class StepModule(nn.Module):
    """A stage's training step as a module's ``forward`` (DDP synchronises gradients of
    what runs through ``forward``; the steps call the models' own methods). Every trainable
    parameter takes part in every step's loss (a zero term where the step does not use
    it: a branch of another stage, or ``forward(None)``, the step of a rank without items),
    so DDP's gradient buckets always fill without searching the graph for unused ones."""

    def __init__(self, model: nn.Module, step) -> None:
        super().__init__()
        self.model = model
        self.step = step

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        zero = torch.stack([p.sum() for p in self.model.parameters()
                            if p.requires_grad]).sum() * 0.0
        if batch is None:
            return {"loss": zero}
        losses = self.step(self.model, batch)
        return {**losses, "loss": losses["loss"] + zero}


def wrap(model: nn.Module, step, device: torch.device) -> nn.Module:
    """``step`` on ``model`` under DistributedDataParallel."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(StepModule(model, step), device_ids=ids)
