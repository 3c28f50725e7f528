"""Prove an identified chain: run it on an index tensor (onnx's reference evaluator, float64) and compare with
``SpaceToDepth(block_size, order)`` element for element, at the model's static sizes or two dynamic ones."""

from __future__ import annotations

import numpy as np
import torch

from ..layers import SpaceToDepth
from .patterns import OnnxStem


def probe_shapes(dims: list | None, channels: int, block_size: int) -> list[tuple[int, int, int, int]]:
    """Input shapes to probe: static dims as they are, dynamic ones at two different sizes (H != W)."""
    dims = list(dims) if dims and len(dims) == 4 else [None, channels, None, None]
    picks = ([2, 1], [channels, channels], [3 * block_size, 2 * block_size], [5 * block_size, 4 * block_size])
    shapes = {tuple(d if isinstance(d, int) and d > 0 else pick[t] for d, pick in zip(dims, picks)) for t in range(2)}
    return sorted(shapes)


def chain_model(model, stem: OnnxStem):
    """The chain as a model of its own: root -> Conv input, with the shape glue and constants it reads."""
    from onnx import TensorProto, helper

    graph = model.graph
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    initializers = {t.name: t for t in graph.initializer}
    picked, stack, inits = set(), [stem.conv_input], {}
    while stack:
        name = stack.pop()
        if name == stem.root:
            continue
        if name in initializers:
            inits[name] = initializers[name]
        elif name in producer and producer[name] not in picked:
            picked.add(producer[name])
            stack.extend(n for n in graph.node[producer[name]].input if n)
    nodes = [graph.node[i] for i in sorted(picked)]  # graph order is a topological order
    sub = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info(stem.root, TensorProto.DOUBLE, None)],
        [helper.make_empty_tensor_value_info(stem.conv_input)],
        list(inits.values()),
    )
    return helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def probe_stem(model, stem: OnnxStem, dims: list | None) -> str | None:
    """None if the chain equals the identified space-to-depth on index inputs, else the reason it does not."""
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    weight = next(t for t in graph.initializer if t.name == graph.node[stem.conv_index].input[1])
    channels = int(weight.dims[1]) // stem.block_size**2
    try:
        session = ReferenceEvaluator(chain_model(model, stem))
    except Exception as error:  # noqa: BLE001 - an unextractable chain is simply not converted
        return f"cannot run the chain on its own ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    s2d = SpaceToDepth(stem.block_size, stem.order)
    for shape in probe_shapes(dims, channels, stem.block_size):
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
