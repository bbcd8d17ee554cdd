"""torch.onnx (dynamo) export of one graph with named dynamic axes, checked symbolic.

Dynamic axes are ``torch.export.Dim``s shared by every input that has them (features and
their mask share ``length``); the ground graph's length is ``length_multiple * blocks`` so
the exporter can prove every pyramid level's size. After export the graph's I/O axes are
renamed to the manifest's names, and intermediate ``value_info`` is dropped: the exporter's
symbolic sizes for the pyramid levels make onnxruntime's memory planner warn about buffer
reuse, and onnxruntime re-infers every shape anyway.
"""

from __future__ import annotations

import logging
import warnings

import onnx
import torch

from gazenlq.bundle.manifest import TensorSpec
from gazenlq.errors import GazeNLQError
from gazenlq.export.graphs import GraphDef, example_inputs

OPSET = 18
MAX_STEPS = 1 << 17
MAX_BATCH = 1 << 12
# Tracing sizes: batch >= 2 and lengths equal to no fixed size of the models.
TRACE_BLOCKS, TRACE_TEXT = 5, 9
# Known, harmless noise of torch.onnx 2.x (see tests/test_export.py for the narrow filters).
_NOISE = (
    (UserWarning, r"# The axis name: .* will not be used"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


class ExportError(GazeNLQError):
    """The exporter failed, or a dynamic axis was specialised to a constant."""


def _dims(graph: GraphDef, max_text: int) -> dict[str, object]:
    dims: dict[str, object] = {
        "batch": torch.export.Dim("batch", min=1, max=MAX_BATCH),
        "text_length": torch.export.Dim("text_length", min=1, max=max_text),
    }
    m = graph.length_multiple
    if m > 1:
        dims["length"] = m * torch.export.Dim("blocks", min=1, max=MAX_STEPS // m)
    else:
        dims["length"] = torch.export.Dim("length", min=1, max=MAX_STEPS)
    return dims


def trace_sizes(graph: GraphDef) -> dict[str, int]:
    """Sizes the graph is traced at (a length that is not a multiple when allowed)."""
    m = graph.length_multiple
    length = TRACE_BLOCKS * m if m > 1 else TRACE_BLOCKS * 4 - 3
    return {"batch": 2, "length": length, "text_length": TRACE_TEXT}


def export_graph(graph: GraphDef, *, opset: int = OPSET, max_text: int = 512) -> onnx.ModelProto:
    """Export ``graph`` with dynamic axes; raises ExportError if an axis was specialised."""
    dims = _dims(graph, max_text)
    shapes = {s.name: {i: dims[d] for i, d in s.dynamic_axes.items()} for s in graph.inputs}
    with warnings.catch_warnings():
        for category, message in _NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                graph.module, example_inputs(graph, trace_sizes(graph)), None, dynamo=True,
                opset_version=opset, input_names=[s.name for s in graph.inputs],
                output_names=[s.name for s in graph.outputs], dynamic_shapes=shapes,
                verbose=False)
        except Exception as exc:  # the exporter raises many types; name the graph
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"exporting the {graph.name} graph failed: {first}") from exc
    model = program.model_proto
    problems = io_problems(model, graph.inputs, graph.outputs, names=False)
    if problems:
        raise ExportError(f"{graph.name} graph: " + "; ".join(problems))
    _name_axes(model, (*graph.inputs, *graph.outputs))
    del model.graph.value_info[:]
    return model


def _name_axes(model: onnx.ModelProto, specs: tuple[TensorSpec, ...]) -> None:
    by_name = {s.name: s for s in specs}
    for vi in (*model.graph.input, *model.graph.output):
        for dim, want in zip(vi.type.tensor_type.shape.dim, by_name[vi.name].shape):
            if isinstance(want, str):
                dim.dim_param = want


def _dtype(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def io_problems(model: onnx.ModelProto, inputs: tuple[TensorSpec, ...],
                outputs: tuple[TensorSpec, ...], *, names: bool = True) -> list[str]:
    """Differences between a graph's I/O and the specs: names, dtypes, ranks, static sizes,
    and every intended dynamic axis still symbolic (named as in the spec if ``names``)."""
    problems = []
    for kind, actual, wanted in (("input", model.graph.input, inputs),
                                 ("output", model.graph.output, outputs)):
        got = [vi.name for vi in actual]
        if got != [s.name for s in wanted]:
            problems.append(f"{kind}s are {got}, expected {[s.name for s in wanted]}")
            continue
        for vi, spec in zip(actual, wanted):
            tt = vi.type.tensor_type
            if _dtype(tt.elem_type) != spec.dtype:
                problems.append(f"{kind} {spec.name} is {_dtype(tt.elem_type)}, "
                                f"expected {spec.dtype}")
            dims = list(tt.shape.dim)
            if len(dims) != len(spec.shape):
                problems.append(f"{kind} {spec.name} has rank {len(dims)}, "
                                f"expected {len(spec.shape)}")
                continue
            for axis, (dim, want) in enumerate(zip(dims, spec.shape)):
                if isinstance(want, int) and dim.dim_value != want:
                    problems.append(f"{kind} {spec.name} axis {axis} is "
                                    f"{dim.dim_param or dim.dim_value}, expected {want}")
                elif isinstance(want, str) and not dim.dim_param:
                    problems.append(f"{kind} {spec.name} axis {axis} ({want}) was specialised "
                                    f"to the constant {dim.dim_value}")
                elif isinstance(want, str) and names and dim.dim_param != want:
                    problems.append(f"{kind} {spec.name} axis {axis} is named "
                                    f"{dim.dim_param!r}, expected {want!r}")
    return problems
