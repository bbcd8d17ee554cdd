"""What this machine can run: CPU always; CUDA and TensorRT backends when present, else why not.

Detection goes through the same checks the product uses (``gazenlq.training.device``,
``gazenlq.engine.runtime.DEVICES`` and ``verify_providers``, ``gazenlq.bundle.trt.
require_tensorrt``), so a benchmark skips exactly where the product would refuse, with the
product's message. An onnxruntime provider counts only when a probe session really runs on
it: a CPU fallback is never timed as a GPU row.
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


def _probe_model() -> bytes:
    """A one-node ONNX model (Identity on a float vector): enough to see which provider
    onnxruntime really gives a session."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def provider_reason(ort, device: str, model: bytes) -> str:
    """'' when a session asked for ``device`` really runs on its provider, else why not:
    a provider listed as available may still fail to load (missing CUDA / cuDNN /
    TensorRT libraries), and onnxruntime then falls back to the next one silently."""
    import warnings

    from gazenlq.engine.runtime import DEVICES, verify_providers
    from gazenlq.errors import GazeNLQError

    have = ort.get_available_providers()
    need = DEVICES[device][0]
    if need not in have:
        return (f"onnxruntime {ort.__version__} has no {need} (it has {', '.join(have)}); "
                "install onnxruntime-gpu on a CUDA machine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback warning: judged below
        session = ort.InferenceSession(model, providers=DEVICES[device])
    try:
        verify_providers(device, session.get_providers(), "a probe graph")
    except GazeNLQError as exc:
        return str(exc)
    return ""


def _ort() -> tuple[tuple[str, ...], str, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return (), "onnxruntime is not installed", "onnxruntime is not installed"
    model = _probe_model()
    return (tuple(ort.get_available_providers()), provider_reason(ort, "cuda", model),
            provider_reason(ort, "tensorrt", model))


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
