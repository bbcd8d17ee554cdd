"""Multi-process training: two processes under torchrun (gloo on the CPU, 127.0.0.1 only)
take the steps one process takes with the same global batch, only rank 0 writes, and a
run killed after an epoch resumes to the same weights; the NCCL path on GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gazenlq.training import checkpoint
from gazenlq.training.distributed import local_torchrun

TOY = Path(__file__).with_name("ddp_toy.py")


def _env() -> dict[str, str]:
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, *args: object) -> None:
    cmd, env = local_torchrun(nproc, str(TOY), *map(str, args))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**env, "OMP_NUM_THREADS": "1"})
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
    _torchrun(2, two, 3, 7)
    assert _max_diff(_raw(one), _raw(two)) < 1e-5
    assert _max_diff(checkpoint.load_weights(one / "last"),
                     checkpoint.load_weights(two / "last")) < 1e-5
    assert not (two / "writes-rank1").exists()  # only rank 0 wrote
    assert (two / "writes-rank0").read_text().count("last") == 3
    # killed after the first epoch, resumed by two processes: the same weights
    _torchrun(2, resumed, 3, 7, "--stop-after", 1)
    _torchrun(2, resumed, 3, 7, "--resume")
    assert _max_diff(_raw(two), _raw(resumed)) < 1e-6
    assert not (resumed / "writes-rank1").exists()


@pytest.mark.gpu
def test_nccl_two_gpus_take_the_steps_of_one(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL data parallelism needs 2 CUDA GPUs; this machine has "
                    f"{torch.cuda.device_count()}")
    _toy(tmp_path / "one", 2, 7, "--cuda")
    _torchrun(2, tmp_path / "two", 2, 7, "--cuda")
    assert _max_diff(_raw(tmp_path / "one"), _raw(tmp_path / "two")) < 1e-4
    assert not (tmp_path / "two" / "writes-rank1").exists()
