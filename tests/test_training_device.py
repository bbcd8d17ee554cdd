"""Training devices: the device choice, mixed precision on CUDA, clear errors without a GPU."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest
import torch

from gazenlq.errors import GazeNLQError
from gazenlq.training import checkpoint
from gazenlq.training.device import (
    Precision,
    autocast_dtype,
    model_device,
    resolve_device,
    to_device,
)
from gazenlq.training.run import train
from tests.conftest import script
from tests.test_training_run import text, tiny_config, tiny_data  # noqa: F401 (fixtures)

NO_CUDA = "needs a CUDA GPU visible to PyTorch (this machine has none)"


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(GazeNLQError, match="unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine "
                    "without CUDA")
def test_cuda_without_gpu_is_one_clear_error(tiny_data, tmp_path):  # noqa: F811
    with pytest.raises(GazeNLQError, match=r"no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    out = subprocess.run([script("gaze-train"), str(tiny_data.stores.parent), "--out",
                          str(tmp_path / "r"),
                          "--device", "cuda"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "no CUDA GPU" in out.stderr and not (tmp_path / "r").exists()


def test_cpu_precision_is_a_no_op():
    amp = Precision.for_device(torch.device("cpu"))
    assert amp.name == "float32" and not amp.scaler.is_enabled()
    with amp.autocast():
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("capability,dtype", [
    ((6, 1), torch.float16),  # Pascal (GTX 10x0)
    ((7, 0), torch.float16),  # Volta (V100): bf16 only emulated
    ((7, 5), torch.float16),  # Turing (T4, RTX 20x0): bf16 only emulated
    ((8, 0), torch.bfloat16),  # Ampere (A100)
    ((8, 6), torch.bfloat16),  # Ampere (RTX 30x0)
    ((8, 9), torch.bfloat16),  # Ada (RTX 4090)
    ((9, 0), torch.bfloat16),  # Hopper
    ((12, 0), torch.bfloat16),  # Blackwell
])
def test_bf16_only_where_the_gpu_computes_it(capability, dtype):
    """Issue 22: ``is_bf16_supported()`` counts emulation, so pre-Ampere GPUs got bf16."""
    assert autocast_dtype(capability) == dtype


def test_to_device_moves_nested_tensors_only():
    batch = {"a": torch.ones(2), "b": [torch.zeros(1), 3], "c": "x"}
    out = to_device(batch, torch.device("cpu"))
    assert out["b"][1] == 3 and out["c"] == "x" and torch.equal(out["a"], batch["a"])
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Identity()) == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_training_on_cuda_in_mixed_precision(tiny_data, text, tmp_path):  # noqa: F811
    cfg = replace(tiny_config(), device="cuda")
    result = train(cfg, tiny_data, tmp_path / "r", variant="gaze", seed=0, text=text,
                   quiet=True)
    hist = [json.loads(line) for line in
            (tmp_path / "r" / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["device"].startswith("cuda")
    assert hist[0]["precision"] in ("bfloat16", "float16")
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in hist)
    weights = checkpoint.load_weights(tmp_path / "r" / "stage2" / "best")
    assert all(w.device.type == "cpu" for w in weights.values())  # loads anywhere
    assert 0.0 <= result["test"]["R1@0.3"] <= 100.0
