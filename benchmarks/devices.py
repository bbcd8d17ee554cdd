"""What this machine can run: CPU always; CUDA and TensorRT backends when present, else why not.

Detection goes through the same checks the product uses (``gazenlq.training.device``,
``gazenlq.engine.runtime.DEVICES``, ``gazenlq.bundle.trt.require_tensorrt``), so a
benchmark skips exactly where the product would refuse, with the product's message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Devices:
    """Available backends; every ``*_reason`` says why its backend is unavailable ('' if it is)."""

    gpu: str | None
    torch_cuda: bool
    torch_cuda_reason: str
    ort_providers: tuple[str, ...]
    ort_cuda_reason: str
    ort_tensorrt_reason: str
    trt_native_reason: str

    @property
    def engine_devices(self) -> dict[str, str]:
        """gaze-search devices -> '' when usable, else the reason it is not."""
        return {"cpu": "", "cuda": self.ort_cuda_reason, "tensorrt": self.ort_tensorrt_reason,
                "trt-native": self.trt_native_reason}

    def to_dict(self) -> dict:
        return asdict(self)


def _torch_cuda() -> tuple[bool, str]:
    try:
        from gazenlq.training.device import resolve_device
    except ImportError as exc:
        return False, f"PyTorch is not installed ({exc.name})"
    from gazenlq.errors import GazeNLQError

    try:
        resolve_device("cuda")
    except GazeNLQError as exc:
        return False, str(exc)
    return True, ""


def _ort() -> tuple[tuple[str, ...], str, str]:
    from gazenlq.engine.runtime import DEVICES

    try:
        import onnxruntime as ort
    except ImportError:
        return (), "onnxruntime is not installed", "onnxruntime is not installed"
    have = tuple(ort.get_available_providers())
    reasons = []
    for device in ("cuda", "tensorrt"):
        need = DEVICES[device][0]
        reasons.append("" if need in have else
                       f"onnxruntime {ort.__version__} has no {need} (it has "
                       f"{', '.join(have)}); install onnxruntime-gpu on a CUDA machine")
    return have, reasons[0], reasons[1]


def _trt_native() -> str:
    from gazenlq.bundle.trt import require_tensorrt
    from gazenlq.errors import GazeNLQError

    try:
        require_tensorrt()
    except GazeNLQError as exc:
        return str(exc)
    try:
        from gazenlq.engine.trt import load_cudart

        load_cudart()
    except GazeNLQError as exc:
        return str(exc)
    return ""


def detect() -> Devices:
    from benchmarks.common import gpu_name

    cuda, cuda_reason = _torch_cuda()
    providers, ort_cuda, ort_trt = _ort()
    return Devices(gpu=gpu_name(), torch_cuda=cuda, torch_cuda_reason=cuda_reason,
                   ort_providers=providers, ort_cuda_reason=ort_cuda,
                   ort_tensorrt_reason=ort_trt, trt_native_reason=_trt_native())


if __name__ == "__main__":
    import json

    print(json.dumps(detect().to_dict(), indent=2))
