"""Multi-process training: two processes under torchrun (gloo on the CPU, 127.0.0.1 only)
take the steps one process takes with the same global batch, only rank 0 writes, and a
run killed after an epoch resumes to the same weights; the NCCL path on GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gazenlq.training import checkpoint
from gazenlq.training.distributed import run_local

TOY = Path(__file__).with_name("ddp_toy.py")


def _env() -> dict[str, str]:
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1"}


def _ranks(nproc: int, *args: object) -> None:
    out = run_local(nproc, str(TOY), *map(str, args), env=_env(), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def _toy(*args: object) -> None:
    out = subprocess.run([sys.executable, str(TOY), *map(str, args)], capture_output=True,
                         text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]


def _raw(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_resume(run / "last")["raw"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_write_once_and_resume(tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    _toy(one, 3, 7)
    _ranks(2, two, 3, 7)
    assert _max_diff(_raw(one), _raw(two)) < 1e-5
    assert _max_diff(checkpoint.load_weights(one / "last"),
                     checkpoint.load_weights(two / "last")) < 1e-5
    assert not (two / "writes-rank1").exists()  # only rank 0 wrote
    assert (two / "writes-rank0").read_text().count("last") == 3
    # killed after the first epoch, resumed by two processes: the same weights
    _ranks(2, resumed, 3, 7, "--stop-after", 1)
    _ranks(2, resumed, 3, 7, "--resume")
    assert _max_diff(_raw(two), _raw(resumed)) < 1e-6
    assert not (resumed / "writes-rank1").exists()


LISTENING = """
import json, psutil
from gazenlq.training import distributed
group = distributed.init_from_env(cuda=False)
import torch.distributed as dist
dist.barrier()  # every rank's gloo pairs are up
if group.rank == 0:
    print(json.dumps(sorted({c.laddr.ip for p in [psutil.Process(), *psutil.Process().parent()
                                                  .children()]
                             for c in p.net_connections("tcp") if c.status == "LISTEN"})))
dist.barrier()
distributed.shutdown()
"""


@pytest.mark.slow
def test_local_ranks_listen_on_loopback_only_and_a_failing_rank_stops_the_rest():
    """run_local's process group: the store and gloo listen on 127.0.0.1 alone (torchrun's
    agent store listened on every address); a rank's failure ends the run with its code."""
    out = run_local(2, "-c", LISTENING, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["127.0.0.1"]
    t0 = time.monotonic()
    failed = run_local(2, "-c", "import os, sys, time\n"
                       "sys.exit(3) if os.environ['RANK'] == '1' else time.sleep(60)",
                       env=_env(), timeout=120)
    assert failed.returncode == 3 and time.monotonic() - t0 < 30


@pytest.mark.gpu
def test_nccl_two_gpus_take_the_steps_of_one(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL data parallelism needs 2 CUDA GPUs; this machine has "
                    f"{torch.cuda.device_count()}")
    _toy(tmp_path / "one", 2, 7, "--cuda")
    _ranks(2, tmp_path / "two", 2, 7, "--cuda")
    assert _max_diff(_raw(tmp_path / "one"), _raw(tmp_path / "two")) < 1e-4
    assert not (tmp_path / "two" / "writes-rank1").exists()
