"""Prove an identified chain: run it on an index tensor (onnx's reference evaluator, float64) and compare with
``SpaceToDepth(block_size, order)`` element for element, at the model's static sizes or two dynamic ones.

Bounded before it runs: only ops of ``CHAIN_OPS`` (no control flow, nothing that grows a tensor), at most
``MAX_CHAIN_MODEL_NODES`` nodes, at most ``MAX_PROBE_ELEMENTS`` elements (a larger static shape is left unconverted).
"""

from __future__ import annotations

import numpy as np
import torch

from ..layers import SpaceToDepth
from .io import bounded_product
from .patterns import GraphIndex, OnnxStem


MAX_PROBE_ELEMENTS = 1 << 24  # 128 MiB of float64 per index tensor; a 3x2048x2048 stem input is 12.6 M
MAX_CHAIN_MODEL_NODES = 256  # chain + its shape glue (a dynamic YOLOv5 Focus export: about 40)
CHAIN_OPS = frozenset(
    {
        *("Slice", "Concat", "Reshape", "Transpose", "SpaceToDepth", "Squeeze", "Unsqueeze", "Identity"),
        *("Shape", "Gather", "Constant", "Cast", "Div", "Mul", "Add", "Sub", "Neg", "Floor", "Ceil", "Max", "Min"),
        *("Equal", "Less", "Greater", "Where", "Abs", "Mod"),
    }
)


class ProbeRefused(ValueError):
    """The chain would need an unbounded run (an op outside ``CHAIN_OPS``) or too many elements to prove."""


def probe_shapes(dims: list | None, channels: int, block_size: int) -> list[tuple[int, int, int, int]]:
    """Input shapes to probe: static dims as they are, dynamic ones at two different sizes (H != W)."""
    dims = list(dims) if dims and len(dims) == 4 else [None, channels, None, None]
    picks = ([2, 1], [channels, channels], [3 * block_size, 2 * block_size], [5 * block_size, 4 * block_size])
    shapes = {tuple(d if isinstance(d, int) and d > 0 else pick[t] for d, pick in zip(dims, picks)) for t in range(2)}
    for shape in shapes:
        if bounded_product(shape, MAX_PROBE_ELEMENTS) > MAX_PROBE_ELEMENTS:
            raise ProbeRefused(
                f"the stem input is declared {'x'.join(map(str, shape))}: proving the chain on it would take more "
                f"than {MAX_PROBE_ELEMENTS:,} elements; left unchanged (export with dynamic or smaller sizes)"
            )
    return sorted(shapes)


def chain_model(model, stem: OnnxStem, index: GraphIndex | None = None):
    """The chain as a model of its own: root -> Conv input, with the shape glue and constants it reads."""
    from onnx import TensorProto

    def admit(node, picked: int) -> None:
        if node.op_type not in CHAIN_OPS or node.domain not in ("", "ai.onnx"):
            raise ProbeRefused(f"the chain reads {node.op_type} {node.name or node.output[0]!r}, not a layout op")
        if picked >= MAX_CHAIN_MODEL_NODES:
            raise ProbeRefused(f"the chain and its shape arithmetic hold over {MAX_CHAIN_MODEL_NODES} nodes")

    index = index or GraphIndex(model.graph)
    return index.extract(model, stem.root, stem.conv_input, TensorProto.DOUBLE, admit)


def probe_stem(model, stem: OnnxStem, dims: list | None, index: GraphIndex | None = None) -> str | None:
    """None if the chain equals the identified space-to-depth on index inputs, else the reason it does not."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    index = index or GraphIndex(graph)
    weight = index.initializers[stem.weight]
    channels = int(weight.dims[1]) // stem.block_size**2
    try:
        shapes = probe_shapes(dims, channels, stem.block_size)
        chain = chain_model(model, stem, index)
    except ProbeRefused as error:
        return str(error)
    try:
        session = ReferenceEvaluator(chain)
    except Exception as error:  # noqa: BLE001 - an unextractable chain is simply not converted
        return f"cannot run the chain on its own ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    s2d = SpaceToDepth(stem.block_size, stem.order)
    for shape in shapes:
        x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)  # every element distinct, exact in float64
        try:
            got = session.run(None, {stem.root: x})[0]
        except Exception as error:  # noqa: BLE001
            return f"the chain fails on a {'x'.join(map(str, shape))} input ({type(error).__name__})"
        expected = s2d(torch.from_numpy(x)).numpy()
        if got.shape != expected.shape or not np.array_equal(got, expected):
            return (
                f"on a {'x'.join(map(str, shape))} index input the chain is not space-to-depth"
                f"({stem.block_size}, {stem.order})"
            )
    return None
