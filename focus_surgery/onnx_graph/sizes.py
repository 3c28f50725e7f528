"""The input sizes a graph is verified at, and the bounds checked before any run.

Static axes run as declared; dynamic height / width at multiples of the model's largest stride (so a stride-64 P6
model gets sizes its own Concats accept): ``REAL_SIZE``, then ``SECOND_SIZE`` (H != W) at batch 2. Every input and
inferred tensor stays within ``MAX_VERIFY_ELEMENTS``; every Loop needs a constant trip count within ``MAX_LOOP_TRIPS``.
"""

from __future__ import annotations

import math

from .io import OnnxSurgeryError, bounded_product
from .patterns import attribute, subgraphs

REAL_SIZE = 640  # YOLOv5 / Ultralytics / YOLOX deployment size; dynamic axes are verified here first
SECOND_SIZE = (320, 480)  # (height, width) of the second trial, rounded up to the stride
MAX_STRIDE = 1024  # a cumulative stride past this is not an image model's; the walk stops growing it
MAX_VERIFY_ELEMENTS = 1 << 26  # per tensor (256 MiB of float32), the per-operation limit of the torch side
MAX_LOOP_TRIPS = 1 << 16
_STRIDED = ("Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool")


def largest_stride(model, stems=()) -> int:
    """The least common multiple of the cumulative strides of every tensor in the main graph (1 when none).

    One pass in graph order: each tensor's (height, width) factor is the lcm of its node's inputs' times the node's
    stride (Conv / pooling, Slice steps on axes 2, 3, SpaceToDepth), divided by a constant integer Resize / Upsample
    scale; a stem's output is its root's times the block size; ``Shape`` outputs carry none.
    """
    from .patterns import GraphIndex

    graph = model.graph
    index = GraphIndex(graph)
    stem_out = {s.conv_input: (s.root, s.block_size) for s in stems if s.block_size}
    factor: dict[str, tuple[int, int]] = {}
    largest = 1

    def capped(value: int) -> int:
        return min(value, MAX_STRIDE)

    for node in graph.node:
        fy = fx = 1
        if node.op_type != "Shape":
            for name in node.input:
                y, x = factor.get(name, (1, 1))
                fy, fx = capped(math.lcm(fy, y)), capped(math.lcm(fx, x))
        sy = sx = 1
        if node.op_type in _STRIDED:
            strides = list(attribute(node, "strides") or [1, 1])
            sy, sx = strides[0], strides[-1]
        elif node.op_type == "SpaceToDepth":
            sy = sx = int(attribute(node, "blocksize", 1))
        elif node.op_type == "Slice" and len(node.input) > 4 and node.input[4]:
            steps, axes = index.const(node.input[4]), index.const(node.input[3]) if node.input[3] else None
            if steps is not None and axes is not None and steps.size == axes.size:
                for axis, step in zip(axes.reshape(-1).tolist(), steps.reshape(-1).tolist()):
                    sy = abs(step) if axis in (2, -2) and step else sy
                    sx = abs(step) if axis in (3, -1) and step else sx
        fy, fx = fy * max(sy, 1), fx * max(sx, 1)
        if node.op_type in ("Resize", "Upsample"):  # an integer upsampling undoes that much stride
            slot = 2 if node.op_type == "Resize" else 1  # Resize(X, roi, scales), Upsample(X, scales)
            scales = index.const(node.input[slot]) if len(node.input) > slot else None
            if scales is not None and scales.size == 4:
                uy, ux = float(scales.reshape(-1)[2]), float(scales.reshape(-1)[3])
                fy = fy // int(uy) if uy.is_integer() and uy >= 1 and fy % int(uy) == 0 else fy
                fx = fx // int(ux) if ux.is_integer() and ux >= 1 and fx % int(ux) == 0 else fx
        for name in node.output:
            if name in stem_out:
                root, bs = stem_out[name]
                y, x = factor.get(root, (1, 1))
                factor[name] = (capped(y * bs), capped(x * bs))
            else:
                factor[name] = (capped(fy), capped(fx))
            largest = capped(math.lcm(largest, *factor[name]))
    return largest


def _round_up(size: int, multiple: int) -> int:
    return multiple * max(1, -(-size // multiple))


def trial_shapes(model, stride: int) -> list[dict[str, tuple[int, ...]]]:
    """Input shapes per trial: one trial when every input is static, else two (see the module docstring)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dynamic = any(not d.HasField("dim_value") for i in inputs for d in i.type.tensor_type.shape.dim)
    trials = [(1, REAL_SIZE, REAL_SIZE), (2, *SECOND_SIZE)] if dynamic else [(1, REAL_SIZE, REAL_SIZE)]
    out = []
    for batch, height, width in trials:
        h, w = _round_up(height, stride), _round_up(width, stride)
        trial = {}
        for value in inputs:
            dims = value.type.tensor_type.shape.dim
            static = [d.HasField("dim_value") for d in dims]
            nhwc = len(dims) == 4 and static[3] and not static[1]  # channels last: (N, H, W, C)
            picks = [batch, h, w, 3] if nhwc else [batch, 3, h, w]
            trial[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else picks[min(k, 3)] for k, d in enumerate(dims)
            )
        out.append(trial)
    return out


def _elements(shape) -> int:
    return bounded_product([max(int(d), 0) for d in shape], MAX_VERIFY_ELEMENTS)


def describe(shapes: dict[str, tuple[int, ...]]) -> str:
    return "; ".join(f"{name}={'x'.join(map(str, s))}" for name, s in shapes.items())


def check_bounded(model, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a run whose inputs or inferred tensors exceed ``MAX_VERIFY_ELEMENTS`` or whose Loops are unbounded.

    Raises:
        OnnxSurgeryError: What is too big (or unbounded), and that conversion without ``--verify`` skips the run.
    """
    import onnx

    from .patterns import GraphIndex

    fix = "convert without --verify to skip running it"
    index = GraphIndex(model.graph)
    for name, shape in shapes.items():
        if _elements(shape) > MAX_VERIFY_ELEMENTS:
            raise OnnxSurgeryError(
                f"verification input {describe({name: shape})} is over {MAX_VERIFY_ELEMENTS:,} elements; {fix}"
            )
    stack = list(model.graph.node)
    while stack:  # every node, subgraphs included (explicit stack: no recursion)
        node = stack.pop()
        if node.op_type == "Loop":
            trips = _loop_trips(index, node)
            if trips is None or trips > MAX_LOOP_TRIPS:
                raise OnnxSurgeryError(
                    f"Loop {node.name or node.output[0]!r} has no constant trip count within {MAX_LOOP_TRIPS}; "
                    f"running it is unbounded; {fix}"
                )
        for sub in subgraphs(node):
            stack.extend(sub.node)
    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    for value in sized.graph.input:
        if value.name in shapes:
            for d, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                d.Clear()
                d.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(sized).graph
    except Exception:  # noqa: BLE001 - inference refines the bound; onnxruntime itself checks what it cannot
        return
    for value in [*inferred.value_info, *inferred.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims) and _elements([d.dim_value for d in dims]) > MAX_VERIFY_ELEMENTS:
            raise OnnxSurgeryError(
                f"at {describe(shapes)} tensor {value.name!r} would hold over {MAX_VERIFY_ELEMENTS:,} elements; {fix}"
            )


def _loop_trips(index, node) -> int | None:
    """A Loop's constant trip count ``M`` (an initializer or Constant of the main graph), else None."""
    if not node.input or not node.input[0]:
        return None
    value = index.const(node.input[0])
    if value is None or value.size != 1:
        return None
    return int(value.reshape(-1)[0])
