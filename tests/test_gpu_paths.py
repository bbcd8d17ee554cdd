"""GPU paths, tested wherever a GPU is not needed (issue 22): onnxruntime's silent provider
fallback refused, the TensorRT provider's options, rows split to a profile's batch, the
native runner's CUDA bookkeeping and checks, the index key naming its device and precision,
and the GPU check's comparison. Runs on GPUs are in test_engine / test_export (skipped
here with their reason) and ``python -m benchmarks.gpu_check``."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.gpu_check import Compared, compare_top
from gazenlq.bundle.manifest import verify_bundle
from gazenlq.bundle.trt import axis_ranges, profile_shapes
from gazenlq.engine import SearchEngine, SearchOptions
from gazenlq.engine.cache import cache_key
from gazenlq.engine.runtime import (
    DEVICES,
    Runtime,
    RuntimeOptions,
    tensorrt_cache_dir,
    tensorrt_provider_options,
    verify_providers,
)
from gazenlq.engine.trt import TrtGraph, bucket_bytes, check_cuda, check_dtype
from gazenlq.errors import GazeNLQError
from tests.conftest import REPO

QUERIES = ["where did I put the knife", "what did I cut", "where is the cup", "who was there",
           "which drawer did I open"]
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()


# -- provider fallback --------------------------------------------------------------------

@pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime-gpu is installed: no fallback to show")
def test_a_session_that_fell_back_to_the_cpu_is_refused(tiny_bundle):
    """onnxruntime's CPU build shows the fallback the issue is about: asked for CUDA, the
    session runs on the CPU without an error."""
    with pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        session = ort.InferenceSession(str(tiny_bundle / "text.onnx"),
                                       providers=DEVICES["cuda"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(GazeNLQError) as info:
        verify_providers("cuda", session.get_providers(), "text.onnx")
    msg = str(info.value)
    assert msg.startswith("device 'cuda': onnxruntime could not load CUDAExecutionProvider "
                          "for text.onnx and fell back to CPUExecutionProvider")
    assert "\n" not in msg
    verify_providers("cpu", session.get_providers(), "text.onnx")


@pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime-gpu is installed: no fallback to show")
@pytest.mark.parametrize("device,provider", [("cuda", "CUDAExecutionProvider"),
                                             ("tensorrt", "TensorrtExecutionProvider")])
def test_the_runtime_refuses_a_provider_that_does_not_load(tiny_bundle, monkeypatch, tmp_path,
                                                           device, provider):
    """The Runtime's own path: a provider listed as available but failing to load (here:
    listed by a patched get_available_providers, absent from this build) is refused after
    the session is made, instead of timing the CPU as a GPU."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the TensorRT provider's cache
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [provider, *real])
    with warnings.catch_warnings(record=True) as seen, \
            pytest.raises(GazeNLQError, match=f"could not load {provider}.*fell back to "
                          "CPUExecutionProvider"):
        warnings.simplefilter("always")
        Runtime(tiny_bundle, RuntimeOptions(device=device))
    assert any(provider in str(w.message) for w in seen)  # onnxruntime's own word for it
    if device == "tensorrt":  # the engine cache directory was prepared under the user's
        assert list((tmp_path / "gazenlq" / "ort-tensorrt").iterdir())


def test_the_cpu_runtime_reports_what_really_ran(tiny_bundle):
    runtime = Runtime(tiny_bundle)
    runtime.video(np.zeros((1, 64, runtime.manifest.dims["video_dim"]), np.float32),
                  np.ones((1, 64), bool),
                  np.zeros((1, 64, runtime.manifest.dims["gaze_dim"]), np.float32)
                  if runtime.uses_gaze else None)
    assert runtime.providers == {g: ["CPUExecutionProvider"] for g in ("text", "ground",
                                                                        "video")}
    assert runtime.bounds == {}  # no TensorRT profile: nothing is split


# -- the TensorRT provider's options ------------------------------------------------------

def test_tensorrt_provider_options_carry_cache_fp16_and_the_profiles(tiny_bundle, tmp_path):
    m = verify_bundle(tiny_bundle)
    ground = m.graph("ground")
    ranges = axis_ranges(length_multiple=m.length_multiple, max_tokens=32,
                         max_length=m.max_len, max_batch=16)
    profiles = profile_shapes(ground, ranges)
    opts = tensorrt_provider_options(profiles, fp16=True, cache_dir=tmp_path)
    assert opts["trt_fp16_enable"] == "True" and opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == str(tmp_path)
    hidden = m.dims["hidden"]
    first = ground.inputs[0]
    assert first.name == "video_emb"
    assert opts["trt_profile_max_shapes"].startswith(f"video_emb:16x{m.max_len}x{hidden},"
                                                     f"mask:16x{m.max_len},")
    assert opts["trt_profile_min_shapes"].startswith(
        f"video_emb:1x{m.length_multiple}x{hidden},")
    for key in ("min", "opt", "max"):  # every input named once, in the graph's order
        names = [part.split(":")[0] for part in opts[f"trt_profile_{key}_shapes"].split(",")]
        assert names == [t.name for t in ground.inputs]
    assert tensorrt_provider_options(profiles, fp16=False, cache_dir=tmp_path)[
        "trt_fp16_enable"] == "False"
    sha = m.files[ground.file].sha256
    assert tensorrt_cache_dir(sha, "fp16", profiles) != tensorrt_cache_dir(sha, "fp32",
                                                                          profiles)


# -- rows split to a profile's batch ------------------------------------------------------

def test_calls_larger_than_a_profile_are_split_with_the_same_results(tiny_bundle):
    """A --queries file's text in one call used to exceed the engine's batch: now split into
    profile-sized calls whose results are the unsplit ones."""
    runtime = Runtime(tiny_bundle)
    whole, mask, emb = runtime.text(QUERIES)
    runtime.bounds["text"] = {"batch": (1, 2), "text_length": (1, 32)}
    split, mask2, emb2 = runtime.text(QUERIES)
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-6)
    if emb is not None:
        np.testing.assert_allclose(emb2, emb, rtol=0, atol=1e-6)
    m = runtime.manifest
    length = 2 * m.length_multiple
    rng = np.random.default_rng(0)
    hidden = int(m.dims["hidden"])
    video_emb = rng.standard_normal((5, length, hidden)).astype(np.float32)
    gaze = video_emb[:, :, ::-1].copy() if runtime.uses_gaze else None
    vmask = np.ones((5, length), bool)
    vmask[3, length // 2:] = False
    want = runtime.ground(video_emb, gaze, vmask, whole, mask)
    runtime.bounds["ground"] = {"batch": (1, 3), "length": (m.length_multiple, length),
                                "text_length": (1, 32)}
    got = runtime.ground(video_emb, gaze, vmask, whole, mask)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    with pytest.raises(GazeNLQError, match=r"cpu ground\.onnx: input video_emb has length "
                       rf"{2 * length}, outside the {m.length_multiple}\.\.{length}"):
        runtime.ground(np.zeros((1, 2 * length, hidden), np.float32),
                       None if gaze is None else np.zeros((1, 2 * length, hidden), np.float32),
                       np.ones((1, 2 * length), bool), whole[:1], mask[:1])


# -- the native runner's bookkeeping (no GPU: a recording stand-in for cuda-python) -------

class _Err(int):
    """A cudaError_t as cuda-python returns it: an int enum with a name."""

    @property
    def name(self) -> str:
        return "cudaSuccess" if self == 0 else "cudaErrorMemoryAllocation"


class _RecordingCudart:
    """Records cudaMalloc / cudaFree / cudaStreamDestroy: bookkeeping, never results."""

    def __init__(self, fail_free: bool = False) -> None:
        self.live: dict[int, int] = {}
        self.mallocs, self.fail_free, self.destroyed = 0, fail_free, []
        self._next = 0x1000

    def cudaMalloc(self, size):
        self.mallocs += 1
        self._next += size
        self.live[self._next] = size
        return _Err(0), self._next

    def cudaFree(self, ptr):
        self.live.pop(ptr)
        return (_Err(2),) if self.fail_free else (_Err(0),)

    def cudaStreamDestroy(self, stream):
        self.destroyed.append(stream)
        return (_Err(0),)


def _bare_graph(cudart) -> TrtGraph:
    graph = TrtGraph.__new__(TrtGraph)  # the buffer logic only: no engine, no GPU
    graph.cudart, graph.buffers, graph.stream, graph.where = cudart, {}, "stream", "x.engine"
    return graph


def test_device_buffers_are_kept_per_tensor_and_freed_on_close():
    cu = _RecordingCudart()
    graph = _bare_graph(cu)
    first = graph._buffer("video_emb", 1000)
    assert cu.mallocs == 1 and cu.live[first] == 1024
    assert graph._buffer("video_emb", 1024) == first and cu.mallocs == 1  # reused
    assert graph._buffer("video_emb", 10) == first and cu.mallocs == 1  # smaller: reused
    grown = graph._buffer("video_emb", 1025)
    assert cu.mallocs == 2 and first not in cu.live and cu.live[grown] == 2048
    graph._buffer("mask", 40)
    assert len(cu.live) == 2
    graph.close()
    assert cu.live == {} and cu.destroyed == ["stream"] and graph.stream is None
    graph.close()  # idempotent
    assert cu.destroyed == ["stream"]


def test_a_failed_cuda_free_is_raised_after_everything_was_released():
    cu = _RecordingCudart(fail_free=True)
    graph = _bare_graph(cu)
    graph._buffer("a", 10)
    graph._buffer("b", 10)
    with pytest.raises(GazeNLQError, match=r"CUDA error in cudaFree\(a\): "
                       r"cudaErrorMemoryAllocation \(2\)"):
        graph.close()
    assert cu.live == {} and cu.destroyed == ["stream"]


@given(st.integers(0, 1 << 40))
def test_buffer_buckets_hold_the_bytes_within_a_factor_two(nbytes):
    size = bucket_bytes(nbytes)
    assert size >= max(nbytes, 256) and size & (size - 1) == 0
    assert size < 2 * max(nbytes, 256)


def test_cuda_statuses_and_dtypes_are_checked():
    assert check_cuda((_Err(0), 7), "cudaMalloc") == 7
    assert check_cuda((_Err(0),), "cudaFree") is None
    with pytest.raises(GazeNLQError, match=r"CUDA error in cudaMalloc\(64\): "
                       r"cudaErrorMemoryAllocation \(2\)"):
        check_cuda((_Err(2), 0), "cudaMalloc(64)")
    check_dtype("mask", np.dtype(bool), np.dtype(np.bool_), "g.engine")
    with pytest.raises(GazeNLQError, match=r"g\.engine: input video is float64, the engine "
                       "expects float32"):
        check_dtype("video", np.dtype(np.float64), np.dtype(np.float32), "g.engine")


# -- the index names what computed it ----------------------------------------------------

def test_the_index_key_names_the_device_and_precision():
    plan = (2560, 256, 0, 9000, {"video_emb": (2560, 64)})
    cpu = cache_key(("a" * 64, "cpu", "fp32"), *plan)
    assert cpu == cache_key(("a" * 64, "cpu", "fp32"), *plan)
    others = {cache_key(p, *plan) for p in (("a" * 64, "tensorrt", "fp16"),
                                            ("a" * 64, "trt-native", "fp32"),
                                            ("a" * 64, "cpu", "fp16"), ("b" * 64, "cpu", "fp32"))}
    assert cpu not in others and len(others) == 4


def test_an_index_from_another_device_is_not_read(tiny_trained, tiny_bundle, tmp_path):
    """Embeddings written by one backend are not served to another: the store's index
    of a CPU search is a miss for a runtime that reports another device."""
    data, _ = tiny_trained
    store = tmp_path / "v.zarr"
    shutil.copytree(sorted(data.stores.glob("*.zarr"))[0], store,
                    ignore=shutil.ignore_patterns("cache"))
    opts = SearchOptions(mode="exhaustive")
    cpu = SearchEngine(tiny_bundle, options=opts)
    assert cpu.runtime.producer("video") == (
        cpu.manifest.files["video.onnx"].sha256, "cpu", "fp32")
    first = cpu.search(store, QUERIES[0])
    assert first.timings.cached_windows == 0 and first.timings.windows > 0
    assert cpu.search(store, QUERIES[0]).timings.cached_windows == first.timings.windows
    other = SearchEngine(tiny_bundle, options=opts)
    other.runtime.device = "tensorrt"  # as a TensorRT runtime would report itself
    again = other.search(store, QUERIES[0])
    assert again.timings.cached_windows == 0 and again.timings.video_model > 0


# -- the GPU check's comparison -----------------------------------------------------------

def _moments(*rows):
    return [(f"v{i % 2}", s, e, score) for i, (s, e, score) in enumerate(rows)]


def test_compare_top_accepts_reordered_near_ties_and_refuses_other_moments():
    ref = _moments((1.0, 4.0, 0.9), (10.0, 12.0, 0.5), (20.0, 30.0, 0.49))
    assert compare_top(ref, ref, time_tol=1e-3, score_tol=1e-4) == Compared(3, [], 0)
    swapped = [ref[0], (ref[2][0], 20.001, 30.0, 0.5), (ref[1][0], 10.0, 12.0, 0.495)]
    assert compare_top(ref, swapped, time_tol=0.01, score_tol=0.02).problems == []
    moved = [ref[0], (ref[1][0], 10.0, 12.0, 0.6), ref[2]]  # same place, another score
    problems = compare_top(ref, moved, time_tol=0.01, score_tol=0.02).problems
    assert problems[0] == "rank 2: score 0.6000, the reference's 0.5000"
    assert any("10.000-12.000" in p for p in problems)
    elsewhere = [ref[0], (ref[1][0], 50.0, 52.0, 0.5), ref[2]]  # a moment not in the ref
    assert compare_top(ref, elsewhere, time_tol=0.01, score_tol=0.005).problems == [
        "v1 10.000-12.000 s (score 0.5000) has no counterpart within 0.01 s / 0.005"]
    assert compare_top(ref, ref[:2], time_tol=1, score_tol=1).problems == [
        "3 moments in the reference, 2 here"]
    drift = [(v, s, e, sc + 0.1) for v, s, e, sc in ref]
    assert len(compare_top(ref, drift, time_tol=1e-3, score_tol=0.02).problems) == 6


def test_a_tie_at_the_cut_may_be_exchanged_but_not_a_better_moment():
    ref = _moments((1.0, 4.0, 0.9), (10.0, 12.0, 0.5), (20.0, 30.0, 0.3))
    at_cut = [ref[0], ref[1], ("v0", 70.0, 72.0, 0.301)]  # tied with the 3rd: exchanged
    assert compare_top(ref, at_cut, time_tol=0.01, score_tol=0.005) == Compared(3, [], 1)
    above = [ref[0], ("v1", 70.0, 72.0, 0.5), ref[2]]  # tied, but not at the cut
    assert len(compare_top(ref, above, time_tol=0.01, score_tol=0.005).problems) == 1


def test_gpu_check_skips_here_with_its_reasons(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out",
                          str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    if "gpu-check skipped" not in out.stdout:
        pytest.skip("this machine has every GPU backend: the check ran for real")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("gpu-check skipped: ")
    for device in ("cuda", "tensorrt", "trt-native"):
        assert any(line.strip().startswith(f"{device}:") for line in lines), out.stdout
    assert not list(tmp_path.iterdir())  # nothing built where nothing can run
