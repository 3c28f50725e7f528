"""Find space-to-depth chains feeding a ``Conv`` in an ONNX graph; read their block size and order from its numbers.

* ``slices``: a channel ``Concat`` of ``bs*bs`` branches of strided ``Slice`` nodes on one tensor; branch ``k`` holds
  pixel phase ``(dy, dx)`` (the starts, step ``bs``); the order is the one whose ``ch(0, dy, dx)`` is ``k``.
* ``SpaceToDepth``: the ONNX op (DCR, order ``timm``).
* ``reshape-transpose``: ``Reshape`` to ``(N, C, H/bs, bs, W/bs, bs)``, ``Transpose``, ``Reshape`` back (as torch
  exports ``PixelUnshuffle`` and ``SpaceToDepth``); the order is the one whose permutation is the ``perm``.

Anything else that looks like one is reported with the reason it was left alone; ``probe.py`` proves each match.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..layers import SpaceToDepth
from ..orders import CHANNEL_LAYOUT, channel_index

LAYOUT_OPS = (
    *("Slice", "Concat", "Reshape", "Transpose", "SpaceToDepth", "Squeeze", "Unsqueeze"),
    *("QuantizeLinear", "DequantizeLinear"),  # followed so that a QDQ per branch is found and named, never folded
)
_DATA_INPUTS = {op: 1 for op in LAYOUT_OPS if op != "Concat"}  # Concat: every input is data
MAX_CHAIN_NODES = 64  # layout nodes one stem may hold (YOLOv5's Focus: 8 Slices + a Concat; NHWC + QDQ: a few more)
_OPEN_END = 2**31 - 1  # torch exports "to the end" as INT64_MAX; anything this large reads to the end


@dataclass
class OnnxStem:
    """One space-to-depth chain feeding a Conv.

    Attributes:
        conv (str): Name of the Conv node (its output name when unnamed); ``conv_index`` its index in ``graph.node``.
        root (str): The tensor the chain reads (N, C, H, W); ``conv_input`` the chain's output.
        family (str): ``slices``, ``SpaceToDepth`` or ``reshape-transpose``.
        nodes (list[int]): Indices of the chain's nodes in ``graph.node`` (the Conv excluded); ``ops`` their count
            per op type.
        block_size, order: Identified block size and channel order (None when unknown).
        reason (str | None): Why the chain is left unchanged; None when it converts.
        weight (str): The initializer holding the Conv's weight (float, or integer behind ``weight_dq``, a
            DequantizeLinear index).
        qdq (list[int]): QuantizeLinear, DequantizeLinear pairs between the chain and the Conv (quantized graphs).
    """

    conv: str
    root: str
    family: str
    nodes: list[int]
    block_size: int | None = None
    order: str | None = None
    reason: str | None = None
    ops: dict[str, int] = field(default_factory=dict)
    conv_index: int = -1
    conv_input: str = ""
    weight: str = ""
    qdq: list[int] = field(default_factory=list)
    weight_dq: int | None = None

    @property
    def convertible(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        keys = ("conv", "root", "family", "block_size", "order", "reason", "ops")
        return {k: getattr(self, k) for k in keys}


class GraphIndex:
    """Producers, consumers and constant values of one graph (outer-scope uses by subgraphs count as consumers)."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for index, node in enumerate(graph.node):
            for name in node.output:
                self.producer[name] = index
            for name in node.input:
                self.consumers.setdefault(name, []).append(index)
            for name in subgraph_inputs(node):
                self.consumers.setdefault(name, []).append(-1)  # used inside an If/Loop/Scan body
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}
        self.initializers = {t.name: t for t in graph.initializer}
        self._numpy_helper = numpy_helper

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output, else None (computed at run time)."""
        if name in self.initializers and name not in self.inputs:
            return self._numpy_helper.to_array(self.initializers[name])
        index = self.producer.get(name)
        if index is None or self.graph.node[index].op_type != "Constant":
            return None
        from onnx import helper

        for attr in self.graph.node[index].attribute:
            value = helper.get_attribute_value(attr)
            if attr.name == "value":
                return self._numpy_helper.to_array(value)
            if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return np.asarray(value)
        return None

    def node_name(self, index: int) -> str:
        node = self.graph.node[index]
        return node.name or node.output[0]

    def extract(self, model, root: str, output: str, elem_type: int, admit=None):
        """The subgraph ``root -> output`` (nodes and initializers it reads) as a model, in graph order;
        ``admit(node, picked)`` may raise to refuse a node before it is taken."""
        from onnx import helper

        picked, inits, stack = set(), {}, [output]
        while stack:
            name = stack.pop()
            if name == root:
                continue
            if name in self.initializers:
                inits[name] = self.initializers[name]
            elif name in self.producer and self.producer[name] not in picked:
                node = self.graph.node[self.producer[name]]
                if admit is not None:
                    admit(node, len(picked))
                picked.add(self.producer[name])
                stack.extend(n for n in node.input if n)
        graph = helper.make_graph(
            [self.graph.node[i] for i in sorted(picked)],
            "extract",
            [helper.make_tensor_value_info(root, elem_type, None)],
            [helper.make_tensor_value_info(output, elem_type, None)],
            list(inits.values()),
        )
        return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


_GRAPH_ATTRS = (5, 10)  # onnx.AttributeProto.GRAPH, GRAPHS


def subgraphs(node) -> list:
    """The graphs ``node`` carries as attributes (If / Loop / Scan bodies: code we do not bound), one level deep."""
    graphs = []
    for attr in node.attribute:
        if attr.type in _GRAPH_ATTRS:
            graphs += [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]
    return graphs


def subgraph_inputs(node) -> set[str]:
    """Names a node's subgraphs read (maybe from the outer graph), nested ones included (a stack: no recursion)."""
    names: set[str] = set()
    stack = [node]
    while stack:
        for sub in subgraphs(stack.pop()):
            for inner in sub.node:
                names.update(inner.input)
                stack.append(inner)
    return names


def inferred_values(model) -> list:
    """The typed values of the main graph (inputs, intermediates, outputs) after ONNX shape inference; the declared
    ones alone when inference fails."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference only refines shapes and types
        graph = model.graph
    return [*graph.input, *graph.value_info, *graph.output]


def attribute(node, name: str, default=None):
    """The value of ``node``'s attribute ``name``, else ``default``."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _walk_chain(index: GraphIndex, tensor: str) -> tuple[list[int], set[str], bool]:
    """Layout nodes on the data path that computes ``tensor``, the tensors that path starts from, and whether the
    walk stopped at ``MAX_CHAIN_NODES`` (no space-to-depth needs more; a longer chain is reported, not followed)."""
    nodes: set[int] = set()
    roots: set[str] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        producer = index.producer.get(name)
        node = index.graph.node[producer] if producer is not None else None
        if node is None or node.op_type not in LAYOUT_OPS or node.domain not in ("", "ai.onnx") or _to_nchw(node):
            roots.add(name)  # an NHWC -> NCHW Transpose is where the image enters: it stays, the chain reads it
            continue
        if producer in nodes:
            continue
        if len(nodes) >= MAX_CHAIN_NODES:
            return sorted(nodes), roots, True
        nodes.add(producer)
        count = _DATA_INPUTS.get(node.op_type, len(node.input))
        stack.extend(node.input[:count])
    return sorted(nodes), roots, False


def _to_nchw(node) -> bool:
    """A Transpose NHWC -> NCHW (perm 0, 3, 1, 2): the layout change of a channels-last input, not a stem op."""
    return node.op_type == "Transpose" and list(attribute(node, "perm", [])) == [0, 3, 1, 2]


def _peel_qdq(index: GraphIndex, tensor: str) -> tuple[str, list[int]]:
    """Follow DequantizeLinear <- QuantizeLinear pairs back from ``tensor``: (the tensor they quantize, pair nodes)."""
    pairs: list[int] = []
    while len(pairs) < 2 * MAX_CHAIN_NODES:
        dq = index.producer.get(tensor)
        if dq is None or index.graph.node[dq].op_type != "DequantizeLinear":
            break
        q = index.producer.get(index.graph.node[dq].input[0])
        if q is None or index.graph.node[q].op_type != "QuantizeLinear":
            break
        pairs += [q, dq]
        tensor = index.graph.node[q].input[0]
    return tensor, pairs


def _looks_like_s2d(index: GraphIndex, nodes: list[int]) -> bool:
    """A strided Slice, a SpaceToDepth or a 6-D Transpose: worth identifying (or reporting)."""
    for i in nodes:
        node = index.graph.node[i]
        if node.op_type == "SpaceToDepth":
            return True
        if node.op_type == "Transpose" and len(attribute(node, "perm", [])) == 6:
            return True
        if node.op_type == "Slice" and len(node.input) > 4:
            steps = index.const(node.input[4])
            if steps is None or np.any(np.abs(steps) > 1):
                return True
    return False


def _exclusive(index: GraphIndex, nodes: list[int], conv: int) -> str | None:
    """None if every tensor the chain makes is read only by the chain (and the Conv), else the reason."""
    inside = set(nodes) | {conv}
    for i in nodes:
        for name in index.graph.node[i].output:
            if name in index.outputs:
                return f"{name!r} (made by {index.node_name(i)}) is also a graph output"
            others = [c for c in index.consumers.get(name, []) if c not in inside]
            if others:
                who = "a subgraph" if others[0] < 0 else index.node_name(others[0])
                return f"{name!r} (made by {index.node_name(i)}) also feeds {who}"
    return None


def _slice_phase(index: GraphIndex, node, dims: list | None, rank: int = 4) -> dict[int, tuple[int, int]] | str:
    """{axis: (start, step)} of one Slice that keeps whole axes except strided spatial ones, else the reason.

    ``dims`` are the sliced image's (int when static): an end at or past a static size also reads to the end.
    """
    if len(node.input) < 3:
        return "Slice with attributes (opset < 10) cannot stride"
    names = [*node.input[1:5], "", ""][:4]  # starts, ends, axes, steps ("" when not given)
    starts, ends, axes, steps = [index.const(n) if n else None for n in names]
    if starts is None or ends is None or any(n and v is None for n, v in zip(names[2:], (axes, steps))):
        return "slice starts/ends/axes/steps are computed at run time"
    axes = axes if axes is not None else np.arange(len(starts))
    steps = steps if steps is not None else np.ones(len(starts), dtype=np.int64)
    out: dict[int, tuple[int, int]] = {}
    for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
        axis = axis + rank if axis < 0 else axis
        size = dims[axis] if dims and len(dims) == rank and 0 <= axis < rank and isinstance(dims[axis], int) else None
        if (end < _OPEN_END and (size is None or end < size)) or start < 0 or step < 1:
            return f"slice on axis {axis} is not start::step to the end (start {start}, end {end}, step {step})"
        if step == 1 and start == 0:
            continue  # a whole axis: no-op
        if axis not in (2, 3) or start >= step:
            return f"slice [{start}::{step}] on axis {axis} is not a pixel phase of a spatial axis"
        if axis in out:
            return f"axis {axis} sliced twice"
        out[axis] = (start, step)
    return out


def _identify_slices(index: GraphIndex, conv_input: str, root: str, dims: list | None) -> tuple[int, str] | str:
    """(block size, order) of a Concat of strided-Slice branches, else the reason it is not a space-to-depth."""
    last = index.graph.node[index.producer[conv_input]]
    if last.op_type != "Concat":
        return f"the chain ends in {last.op_type}, not a Concat of slices"
    if attribute(last, "axis") not in (1, -3):
        return f"Concat on axis {attribute(last, 'axis')}, not the channel axis"
    phases: list[tuple[int, int]] = []
    steps: set[int] = set()
    for branch in last.input:
        merged: dict[int, tuple[int, int]] = {}
        name = branch
        while name != root:
            node = index.graph.node[index.producer[name]] if name in index.producer else None
            if node is None or node.op_type != "Slice":
                return f"Concat input {branch!r} is not a chain of Slices of {root!r}"
            phase = _slice_phase(index, node, dims)
            if isinstance(phase, str):
                return phase
            for axis, value in phase.items():
                if axis in merged:
                    return f"axis {axis} sliced twice in branch {branch!r}"
                merged[axis] = value
            name = node.input[0]
        if set(merged) != {2, 3}:
            return f"branch {branch!r} does not stride both spatial axes"
        steps.update(step for _, step in merged.values())
        phases.append((merged[2][0], merged[3][0]))
    if len(steps) != 1:
        return f"slice steps differ ({sorted(steps)}): no single block size"
    bs = steps.pop()
    if sorted(phases) != [(dy, dx) for dy in range(bs) for dx in range(bs)]:
        return f"{len(phases)} branches with phases {phases}: not each of the {bs}x{bs} pixel phases once"
    # channels of a Concat of phase blocks: ch = k*C + c, so only layouts whose fastest axis is "c" can match
    for order, layout in CHANNEL_LAYOUT.items():
        if layout[-1] == "c" and all(channel_index(0, dy, dx, 1, bs, order) == k for k, (dy, dx) in enumerate(phases)):
            return bs, order
    return f"phase order {phases} is none of the space-to-depth orders ({', '.join(CHANNEL_LAYOUT)})"


def _identify_reshape_transpose(
    index: GraphIndex, nodes: list[int], conv_input: str, root: str, channels_after: int, channels_before: int | None
) -> tuple[int, str] | str:
    """(block size, order) of a linear Reshape/Squeeze/Unsqueeze chain around one 6-D Transpose, else the reason.

    The Transpose must permute ``(N, C, H/bs, bs, W/bs, bs)`` the way ``SpaceToDepth(bs, order)`` does; the reshapes
    around it are proven by ``probe.py`` (dynamic exports compute them from ``Shape``).
    """
    chain, name = [], conv_input
    while name != root:
        node = index.graph.node[index.producer[name]] if name in index.producer else None
        if node is None or node.op_type not in ("Reshape", "Transpose", "Squeeze", "Unsqueeze"):
            held = node.op_type if node is not None else name
            return f"layout chain holds {held!r}, not only reshapes and one Transpose"
        chain.append(node)
        name = node.input[0]
    transposes = [i for i, node in enumerate(chain) if node.op_type == "Transpose"]
    if len(transposes) != 1 or len(chain) != len(nodes):
        return "not one Transpose between reshapes on a single path"
    perm = list(attribute(chain[transposes[0]], "perm", []))
    before = chain[transposes[0] + 1] if transposes[0] + 1 < len(chain) else None
    shape = index.const(before.input[1]) if before is not None and before.op_type == "Reshape" else None
    if channels_before:
        bs = int(round((channels_after / channels_before) ** 0.5))
    elif shape is not None and len(shape) == 6 and shape[3] == shape[5]:
        bs = int(shape[3])
    else:
        return "block size unknown: the input's channel count is unknown and the 6-D Reshape is computed"
    if bs < 2 or (channels_before and bs * bs * channels_before != channels_after):
        return f"Conv reads {channels_after} channels, not {channels_before} x a square block"
    for order in CHANNEL_LAYOUT:
        if SpaceToDepth(bs, order).permutation == perm:
            return bs, order
    return f"Transpose perm {perm} is none of the space-to-depth orders ({', '.join(CHANNEL_LAYOUT)})"


def _conv_weight(index: GraphIndex, conv_index: int) -> tuple[str, int | None] | str:
    """(weight initializer, DequantizeLinear index or None) of a Conv, else the reason the weight is not constant."""
    conv = index.graph.node[conv_index]
    if len(conv.input) < 2:
        return "the Conv has no weight"
    name, dq = conv.input[1], None
    producer = index.producer.get(name)
    if producer is not None and index.graph.node[producer].op_type == "DequantizeLinear":
        node = index.graph.node[producer]
        params = [n for n in node.input[1:] if n]
        if any(index.const(n) is None for n in params):
            return f"the weight's DequantizeLinear {index.node_name(producer)!r} has computed scale / zero point"
        axis, scale = attribute(node, "axis", 1), index.const(node.input[1])
        if attribute(node, "block_size", 0) or (scale.size > 1 and scale.ndim != 1):
            return (  # opset 21 blocked quantization: its scale varies along the axes the fold permutes
                f"the weight's DequantizeLinear {index.node_name(producer)!r} is block-quantized (scale shape "
                f"{list(scale.shape)}), which the fold reshapes (only per-tensor or axis 0 stay exact)"
            )
        if scale.size > 1 and axis not in (0, -4):
            return (
                f"the weight's DequantizeLinear {index.node_name(producer)!r} is per-channel on axis {axis}, "
                "which the fold reshapes (only per-tensor or axis 0, the output channels, stay exact)"
            )
        others = [c for c in index.consumers.get(conv.input[1], []) if c != conv_index]
        if others:
            return f"the weight's DequantizeLinear {index.node_name(producer)!r} also feeds another node"
        name, dq = node.input[0], producer
    if name not in index.initializers or name in index.inputs:
        return "the Conv's weight is not a constant initializer"
    return name, dq


def _conv_reason(index: GraphIndex, conv_index: int) -> str | None:
    """None if the Conv can absorb a space-to-depth exactly (GUIDE section 1), else why not."""
    conv = index.graph.node[conv_index]
    found = _conv_weight(index, conv_index)
    if isinstance(found, str):
        return found
    if len(conv.input) > 2 and conv.input[2] and index.const(conv.input[2]) is None:
        producer = index.producer.get(conv.input[2])
        dequantized = producer is not None and index.graph.node[producer].op_type == "DequantizeLinear"
        if not (dequantized and index.const(index.graph.node[producer].input[0]) is not None):
            return "the Conv's bias is not a constant"
    weight = index.initializers[found[0]]
    if len(weight.dims) != 4:
        return f"{len(weight.dims) - 2}-D Conv, not 2-D"
    if attribute(conv, "group", 1) != 1:
        return f"grouped Conv (group={attribute(conv, 'group')}) is not equivalent to one strided conv"
    if any(d != 1 for d in attribute(conv, "dilations", [1, 1])):
        return f"dilated Conv ({list(attribute(conv, 'dilations'))}) is not equivalent to one strided conv"
    auto_pad = attribute(conv, "auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return f"Conv auto_pad={auto_pad!r}: padding depends on the input size"
    return None


def _qdq_reason(index: GraphIndex, stem: OnnxStem) -> str | None:
    """None if every Quantize/DequantizeLinear pair between the chain and the Conv is per-tensor with constant
    parameters (an elementwise map, which commutes with the space-to-depth permutation), else why not."""
    for i in stem.qdq:
        node = index.graph.node[i]
        params = [n for n in node.input[1:] if n]
        values = [index.const(n) for n in params]
        if any(v is None for v in values) or any(v.size != 1 for v in values):
            return (
                f"{node.op_type} {index.node_name(i)!r} between the chain and the Conv is not per-tensor with constant "
                "scale / zero point; moving it before the space-to-depth would change the quantized values"
            )
    return None


def _root_channels(shapes: dict[str, list], root: str) -> int | None:
    dims = shapes.get(root)
    return dims[1] if dims and len(dims) == 4 and isinstance(dims[1], int) else None


def find_stems(model, shapes: dict[str, list] | None = None, index: GraphIndex | None = None) -> list[OnnxStem]:
    """Every space-to-depth-like chain feeding a Conv in ``model.graph`` (not modified), in graph order, identified
    or with the reason it is not; ``shapes``: tensor name -> dims (int or symbolic str), e.g. from shape inference."""
    graph = model.graph
    index = index or GraphIndex(graph)
    shapes = shapes or {}
    stems = []
    for conv_index, conv in enumerate(graph.node):
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or not conv.input:
            continue
        chain_out, qdq = _peel_qdq(index, conv.input[0])
        nodes, roots, truncated = _walk_chain(index, chain_out)
        if not nodes or not _looks_like_s2d(index, nodes):
            continue
        ops = dict(Counter(graph.node[i].op_type for i in nodes))
        family = "SpaceToDepth" if "SpaceToDepth" in ops else "reshape-transpose" if "Transpose" in ops else "slices"
        stem = OnnxStem(index.node_name(conv_index), min(roots, default=""), family, nodes, ops=ops, qdq=qdq)
        stem.conv_index, stem.conv_input = conv_index, chain_out
        if truncated:
            stem.reason = f"layout chain of more than {MAX_CHAIN_NODES} nodes, not a space-to-depth"
        else:
            stem.reason = _identify(index, stem, roots, shapes)
        stems.append(stem)
    return stems


def _identify(index: GraphIndex, stem: OnnxStem, roots: set[str], shapes: dict[str, list]) -> str | None:
    """Fill ``stem.block_size`` / ``stem.order``; return the reason it cannot convert, or None."""
    if len(roots) != 1:
        return f"the chain reads {len(roots)} tensors ({', '.join(sorted(roots))}), not one image"
    inner = [i for i in stem.nodes if index.graph.node[i].op_type in ("QuantizeLinear", "DequantizeLinear")]
    if inner:
        names = ", ".join(repr(index.node_name(i)) for i in inner[:6])
        return (
            f"QDQ nodes inside the chain ({names}{', ...' if len(inner) > 6 else ''}) quantize each pixel phase on "
            "its own; folding would change the quantized values (quantize only the Conv, or fold before quantizing)"
        )
    reason = (
        _exclusive(index, stem.nodes + stem.qdq, stem.conv_index)
        or _conv_reason(index, stem.conv_index)
        or _qdq_reason(index, stem)
    )
    if reason:
        return reason
    stem.weight, stem.weight_dq = _conv_weight(index, stem.conv_index)
    channels_after = int(index.initializers[stem.weight].dims[1])
    if stem.family == "slices":
        found = _identify_slices(index, stem.conv_input, stem.root, shapes.get(stem.root))
    elif stem.family == "SpaceToDepth":
        found = "SpaceToDepth with other layout ops"
        if len(stem.nodes) == 1:
            found = int(attribute(index.graph.node[stem.nodes[0]], "blocksize")), "timm"
    else:
        found = _identify_reshape_transpose(
            index, stem.nodes, stem.conv_input, stem.root, channels_after, _root_channels(shapes, stem.root)
        )
    if isinstance(found, str):
        return found
    stem.block_size, stem.order = found
    if channels_after % (stem.block_size**2):
        return f"Conv reads {channels_after} channels, not a multiple of block_size**2 = {stem.block_size**2}"
    return None
