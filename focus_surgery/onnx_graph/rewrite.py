"""Replace each identified space-to-depth chain + Conv by one strided Conv, on a copy of the graph.

The weight is permuted by ``remap.focus_to_conv_weight`` (through an index tensor: every dtype bit for bit); kernel,
stride and padding are multiplied by the block size (GUIDE section 1). The Conv keeps its name, output and bias (its
weight its name, unless shared). Chain nodes and the glue only they used go; everything else is left as it was.
"""

from __future__ import annotations

import numpy as np
import torch

from ..remap import focus_to_conv_weight
from .patterns import GraphIndex, OnnxStem, subgraph_inputs


def remap_weight(weight: np.ndarray, block_size: int, order: str) -> np.ndarray:
    """``focus_to_conv_weight`` on a numpy array of any dtype: (O, C*bs*bs, k, k) -> (O, C, bs*k, bs*k), exact."""
    positions = torch.arange(weight.size, dtype=torch.int64).reshape(weight.shape)
    gather = focus_to_conv_weight(positions, block_size, order)
    return np.ascontiguousarray(weight.reshape(-1)[gather.reshape(-1).numpy()].reshape(tuple(gather.shape)))


def _set_ints(node, name: str, values: list[int]) -> None:
    from onnx import helper

    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, values))


def _fold_conv(graph, index: GraphIndex, stem: OnnxStem, taken: set[str]) -> set[str]:
    """Point the Conv (or the QuantizeLinear before it) at the chain's input, with the remapped weight and scaled
    geometry; returns the tensors whose shapes changed. A quantized weight is permuted in its integer dtype (its
    per-tensor or axis-0 scale and zero point are untouched by a permutation of axes 1-3)."""
    from onnx import helper, numpy_helper

    conv = graph.node[stem.conv_index]
    bs, name = stem.block_size, stem.weight
    reader, slot = (stem.weight_dq, 0) if stem.weight_dq is not None else (stem.conv_index, 1)
    weight = numpy_helper.to_array(index.initializers[name])
    new = numpy_helper.from_array(remap_weight(weight, bs, stem.order), name)
    if [c for c in index.consumers.get(name, []) if c != reader]:  # shared weight: add a new tensor
        new.name = _unique(f"{name}_strided", taken)
        graph.node[reader].input[slot] = new.name
        graph.initializer.append(new)
    else:
        index.initializers[name].CopyFrom(new)
    changed = {name, new.name, conv.input[1]}
    if stem.qdq:  # Q/DQ pairs are elementwise and per-tensor: they now quantize the image itself
        graph.node[stem.qdq[-2]].input[0] = stem.root
        changed.update(out for i in stem.qdq for out in graph.node[i].output)
    else:
        conv.input[0] = stem.root
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if "kernel_shape" in attrs:
        _set_ints(conv, "kernel_shape", [bs * k for k in attrs["kernel_shape"]])
    _set_ints(conv, "strides", [bs * s for s in attrs.get("strides", [1, 1])])
    if "pads" in attrs:
        _set_ints(conv, "pads", [bs * p for p in attrs["pads"]])
    return changed


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def rewrite(model, stems: list[OnnxStem]):
    """A copy of ``model`` with every convertible stem folded into its Conv (``stems`` from ``find_stems(model)``)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(stem.convertible for stem in stems):
        return out
    graph = out.graph
    index = GraphIndex(graph)
    taken = {t.name for t in graph.initializer} | set(index.producer) | index.inputs
    removed: set[int] = set()
    changed: set[str] = set()  # weights whose shape changed: their stale value_info goes
    for stem in stems:
        if stem.convertible:
            changed |= _fold_conv(graph, index, stem, taken)
            removed.update(stem.nodes)
    _remove_dead_glue(graph, removed)
    _replace(graph.node, [node for i, node in enumerate(graph.node) if i not in removed])
    _drop_unused(graph, model, changed)
    return out


def _remove_dead_glue(graph, removed: set[int]) -> None:
    """Add to ``removed`` the ancestors of removed nodes whose outputs nothing reads any more (shape glue); a
    worklist with reference counts, linear in the graph's size."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    reads: dict[str, int] = {o.name: 1 for o in graph.output}

    def names_read(node) -> list[str]:
        return [*node.input, *subgraph_inputs(node)]

    for i, node in enumerate(graph.node):
        if i not in removed:
            for name in names_read(node):
                reads[name] = reads.get(name, 0) + 1
    stack = [name for i in removed for name in graph.node[i].input]
    while stack:
        p = producer.get(stack.pop())
        if p is None or p in removed or any(reads.get(name, 0) for name in graph.node[p].output):
            continue
        removed.add(p)
        for name in names_read(graph.node[p]):
            reads[name] -= 1
            stack.append(name)


def _replace(field, items: list) -> None:
    """Replace a repeated message field by copies of ``items`` (repeated fields cannot drop elements by value)."""
    copies = []
    for item in items:
        copy = type(item)()
        copy.CopyFrom(item)
        copies.append(copy)
    del field[:]
    field.extend(copies)


def _drop_unused(graph, original, changed: set[str]) -> None:
    """Remove initializers that only removed nodes read, and value_info of tensors gone or reshaped (``changed``)."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        read.update(subgraph_inputs(node))
    was_read = {name for node in original.graph.node for name in node.input}
    inputs = {i.name for i in graph.input}
    keep = [t for t in graph.initializer if t.name in read or t.name in inputs or t.name not in was_read]
    if len(keep) != len(graph.initializer):
        _replace(graph.initializer, keep)
    present = {name for node in graph.node for name in node.output} | inputs | {t.name for t in graph.initializer}
    infos = [v for v in graph.value_info if v.name in present and v.name not in changed]
    if len(infos) != len(graph.value_info):
        _replace(graph.value_info, infos)
