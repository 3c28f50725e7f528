"""The three space-to-depth channel orders found in the wild (GUIDE section 1).

With block size ``bs`` and ``C`` input channels, space-to-depth writes pixel phase ``(dy, dx)`` of input channel
``c`` to output channel ``ch(c, dy, dx)``:

=================  ================================  ==========================================================
order              ch(c, dy, dx)                     used by
=================  ================================  ==========================================================
``yolov5``         ``(dx*bs + dy)*C + c``            YOLOv5 / Ultralytics ``Focus`` (slices ``[::2, ::2]``,
                                                     ``[1::2, ::2]``, ``[::2, 1::2]``, ``[1::2, 1::2]``)
``timm``           ``(dy*bs + dx)*C + c``            timm ``SpaceToDepth`` (TResNet), TensorFlow, ONNX DCR
``pixel_unshuffle`` ``c*bs*bs + dy*bs + dx``         ``torch.nn.PixelUnshuffle``, ONNX CRD
=================  ================================  ==========================================================

Each order is described by the axis layout of the channel dimension once it is split into three axes; every
other module reshapes and permutes with these layouts, so no code loops over channels or pixels.
"""

from __future__ import annotations

# Channel axis split into three axes, slowest first: "c" input channel, "y" row phase dy, "x" column phase dx.
CHANNEL_LAYOUT: dict[str, tuple[str, str, str]] = {
    "yolov5": ("x", "y", "c"),
    "timm": ("y", "x", "c"),
    "pixel_unshuffle": ("c", "y", "x"),
}
ORDERS: tuple[str, ...] = tuple(CHANNEL_LAYOUT)


def check_order(order: str) -> str:
    """Return ``order`` if it is a known channel order, else raise a ValueError naming the valid ones."""
    if order not in CHANNEL_LAYOUT:
        raise ValueError(f"unknown space-to-depth order {order!r}: use one of {', '.join(ORDERS)}")
    return order


def check_block_size(block_size: int) -> int:
    """Return ``block_size`` if it is an int >= 2, else raise a ValueError."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}")
    return block_size


def channel_index(c: int, dy: int, dx: int, channels: int, block_size: int, order: str) -> int:
    """Output channel of input channel ``c`` at pixel phase ``(dy, dx)`` (the table above; for docs and tests)."""
    sizes = {"c": channels, "y": block_size, "x": block_size}
    values = {"c": c, "y": dy, "x": dx}
    index = 0
    for axis in CHANNEL_LAYOUT[check_order(order)]:
        index = index * sizes[axis] + values[axis]
    return index
