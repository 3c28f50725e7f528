"""Run an ONNX graph in float64: the yardstick for the float32 error of the original graph and of its folded stem.

onnx's reference evaluator on a float64 copy (onnxruntime has no float64 Conv on the CPU), with plain 2-D Conv and
MaxPool in torch (its numpy ones take minutes). Bounded: only ``FLOAT64_OPS`` (no control flow, functions or other
domains), and the caller has already run the same shapes in onnxruntime, so every tensor here had that size there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FLOAT64_OPS = frozenset(
    {
        *("Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Gemm"),
        *("MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Sigmoid", "Relu", "LeakyRelu", "Tanh"),
        *("HardSigmoid", "HardSwish", "Clip", "Neg", "Abs", "Max", "Min", "Floor", "Ceil", "Erf", "Softplus"),
        *("Softmax", "Concat", "Slice", "Split", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Shape"),
        *("Gather", "Constant", "ConstantOfShape", "Cast", "Identity", "Resize", "Expand", "Range", "Equal", "Where"),
        *("ReduceMean", "ReduceMax", "ReduceSum", "SpaceToDepth", "DepthToSpace", "Mish", "Less", "Greater"),
        *("QuantizeLinear", "DequantizeLinear", "Round", "Not", "And", "Or", "Mod", "Tile", "Pad"),
    }
)
_FLOATS = {1, 10, 16}  # FLOAT, FLOAT16, BFLOAT16 (onnx.TensorProto codes)


def to_float64(model):
    """A copy of ``model`` computing in float64 (floating initializers, Constants, Casts, inputs, outputs), or None
    when the graph holds ops outside ``FLOAT64_OPS``, other domains, functions or subgraphs."""
    import onnx
    from onnx import TensorProto, numpy_helper

    if model.functions or any(
        n.op_type not in FLOAT64_OPS or n.domain not in ("", "ai.onnx") for n in model.graph.node
    ):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph

    def widen(tensor) -> None:
        if tensor.data_type in _FLOATS:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))

    for tensor in graph.initializer:
        widen(tensor)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                widen(attr.t)
            elif node.op_type == "Cast" and attr.name == "to" and attr.i in _FLOATS:
                attr.i = TensorProto.DOUBLE
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type in _FLOATS:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        for opset in out.opset_import:  # the reference evaluator implements Q/DQ from opset 19 on (same maths)
            if opset.domain in ("", "ai.onnx") and opset.version < 19:
                opset.version = 19
    return out


def _fast_ops():
    from onnx.reference.ops.op_conv import Conv as ReferenceConv
    from onnx.reference.ops.op_max_pool import MaxPool as ReferenceMaxPool

    class Conv(ReferenceConv):
        """2-D Conv in torch (float64), same arithmetic as the reference up to summation order."""

        def _run(
            self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None, strides=None
        ):
            if X.ndim != 4 or auto_pad not in (None, "NOTSET", "VALID", b"NOTSET", b"VALID"):
                return super()._run(X, W, B, auto_pad, dilations, group, kernel_shape, pads, strides)
            p = list(pads) if pads else [0, 0, 0, 0]
            x = F.pad(torch.from_numpy(np.array(X)), [p[1], p[3], p[0], p[2]])
            bias = torch.from_numpy(np.array(B)) if B is not None else None
            weight = torch.from_numpy(np.array(W))
            y = F.conv2d(x, weight, bias, list(strides or [1, 1]), 0, list(dilations or [1, 1]), group or 1)
            return (y.numpy().astype(X.dtype),)

    class MaxPool(ReferenceMaxPool):
        """2-D MaxPool in torch (padding with -inf, as ONNX does)."""

        def _run(
            self,
            x,
            auto_pad=None,
            ceil_mode=None,
            dilations=None,
            kernel_shape=None,
            pads=None,
            storage_order=None,
            strides=None,
        ):
            plain = auto_pad in (None, "NOTSET", "VALID", b"NOTSET", b"VALID") and not ceil_mode
            if x.ndim != 4 or not plain or (dilations and any(d != 1 for d in dilations)) or len(self.output) > 1:
                return super()._run(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, storage_order, strides)
            p = list(pads) if pads else [0, 0, 0, 0]
            t = F.pad(torch.from_numpy(np.array(x)), [p[1], p[3], p[0], p[2]], value=-float("inf"))
            return (F.max_pool2d(t, list(kernel_shape), list(strides or [1, 1])).numpy().astype(x.dtype),)

    return [Conv, MaxPool]


def run_float64(model64, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a ``to_float64`` model on ``feeds`` (floating inputs cast to float64)."""
    from onnx.reference import ReferenceEvaluator

    session = ReferenceEvaluator(model64, new_ops=_fast_ops())
    cast = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in feeds.items()}
    return session.run(None, cast)
