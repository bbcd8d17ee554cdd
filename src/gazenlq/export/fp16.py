"""fp32 ONNX graph -> half-precision graph with the numerically sensitive parts in fp32.

Kept in float32: LayerNormalization, Softmax and ReduceMean (their inputs are cast up and
outputs cast down), and every node that does not depend on input data (position encodings
and masks computed from shapes: an fp16 ``Range`` cannot count past 2048). Graph inputs and
outputs stay float32, so the engine feeds both variants alike. Weights used by half nodes
are stored in fp16. This is onnxconverter-common's approach, written out because its
converter (and onnxruntime's copy) emits duplicate node names on these graphs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FP32 = frozenset({"LayerNormalization", "Softmax", "ReduceMean"})
SHAPE_OPS = frozenset({"Shape", "Size"})  # their outputs do not depend on the data
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16


class _Converter:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.types = {vi.name: vi.type.tensor_type.elem_type
                      for vi in (*graph.input, *graph.output, *graph.value_info)}
        self.inits = {i.name: i for i in graph.initializer}
        self.types.update({name: i.data_type for name, i in self.inits.items()})
        self.domain = {i.name: FLOAT for i in graph.input}  # float tensor -> FLOAT / HALF
        self.half_inits: dict[str, TensorProto] = {}
        self.casts: dict[tuple[str, int], str] = {}
        self.renamed: dict[str, str] = {}  # graph output -> its internal fp16 tensor
        self.nodes: list[onnx.NodeProto] = []

    def fetch(self, name: str, want: int) -> str:
        """``name`` as a ``want``-typed tensor: fp16 weight copy or a (shared) Cast."""
        name = self.renamed.get(name, name)
        if not name or self.types.get(name) != FLOAT:
            return name
        if name in self.inits:
            if want == FLOAT:
                return name
            key = f"{name}__fp16"
            if key not in self.half_inits:
                array = numpy_helper.to_array(self.inits[name]).astype(np.float16)
                self.half_inits[key] = numpy_helper.from_array(array, key)
            return key
        if self.domain[name] == want:
            return name
        if (name, want) not in self.casts:
            out = f"{name}__to_{'fp32' if want == FLOAT else 'fp16'}"
            self.nodes.append(helper.make_node("Cast", [name], [out], to=want, name=out))
            self.casts[name, want] = out
        return self.casts[name, want]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A half-precision copy of ``model`` (one graph, no functions or subgraphs)."""
    model = onnx.shape_inference.infer_shapes(model)  # a dtype for every tensor
    graph = model.graph
    if model.functions or any(a.type == onnx.AttributeProto.GRAPH
                              for n in graph.node for a in n.attribute):
        raise ValueError("to_fp16 handles flat graphs only (no functions or subgraphs)")
    conv = _Converter(graph)
    data = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        depends = node.op_type not in SHAPE_OPS and any(i in data for i in node.input)
        if depends:
            data.update(node.output)
        want = FLOAT if node.op_type in KEEP_FP32 or not depends else HALF
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(conv.fetch(i, want) for i in node.input)
        if want == HALF and node.op_type == "Cast":
            for attr in new.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF
        tail = []
        for k, out in enumerate(node.output):
            if conv.types.get(out) != FLOAT:
                continue
            conv.domain[out] = want
            if out in outputs and want == HALF:  # keep the graph output float32
                half = new.output[k] = f"{out}__fp16"
                # later nodes read the fp16 tensor; float32 readers share the output's Cast
                conv.renamed[out] = half
                conv.types[half], conv.domain[half] = FLOAT, HALF
                conv.casts[half, FLOAT] = out
                tail.append(helper.make_node("Cast", [half], [out], to=FLOAT,
                                             name=f"{out}__to_fp32"))
        conv.nodes += [new, *tail]
    used = {i for n in conv.nodes for i in n.input}
    graph.ClearField("node")
    graph.node.extend(conv.nodes)
    initializers = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend([*initializers, *conv.half_inits.values()])
    graph.ClearField("value_info")
    onnx.checker.check_model(model)
    return model
