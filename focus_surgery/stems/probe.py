"""Structural recognition of space-to-depth: what a weightless module computes, found by running it.

A ``ReOrg`` (yolov7, YOLOR), a ``Reorg`` (YOLOR darknet), YOLOv5's ``Focus`` slicing or any other weightless module
is recognised by what it does, not by its class name: ``recognize`` runs it on an input whose values encode
channel, row and column (``value = (c*H + y)*W + x``, exact in float32 and float64), then reads, for every output
channel, which input channel and pixel phase ``(dy, dx)`` feed it. A space-to-depth with block size ``bs`` gives
every output channel one fixed ``(c, dy, dx)`` with ``y = bs*i + dy`` and ``x = bs*j + dx``; the channel map is then
compared with the three named orders of ``orders.py``. Anything else is "not a space-to-depth".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConversionError
from ..limits import check_allocation
from ..orders import ORDERS, channel_index

PROBE_SIZE = 48  # divisible by the block sizes 2, 3, 4, 6, 8, 12, 16, 24


@dataclass(frozen=True)
class SpaceToDepthInfo:
    """What a probed module computes.

    Attributes:
        block_size (int): ``bs``.
        order (str | None): ``yolov5`` / ``timm`` / ``pixel_unshuffle``, or None for another channel order.
        channels (int): Input channels ``C`` the probe used.
        channel_map (tuple): For each output channel, the ``(c, dy, dx)`` it reads.
    """

    block_size: int
    order: str | None
    channels: int
    channel_map: tuple[tuple[int, int, int], ...]

    def describe(self) -> str:
        order = self.order or "a channel order of its own (not yolov5, timm or pixel_unshuffle)"
        return f"space-to-depth(block_size={self.block_size}, order={order})"


class NotSpaceToDepth(ConversionError):
    """The probed module does not compute a space-to-depth; the message says what it does instead."""


def _run(module: nn.Module, channels: int) -> tuple[torch.Tensor, int, int]:
    size = PROBE_SIZE
    check_allocation((1, channels, size, size), torch.float64, "the probe input")  # channels may come from a file
    values = torch.arange(channels * size * size, dtype=torch.float64).view(1, channels, size, size)
    dtype = next((t.dtype for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()), None)
    probe = values.to(dtype or torch.float32)  # C*48*48 < 2**24: exact in float32 too
    with torch.no_grad():
        out = module(probe)
    if not isinstance(out, torch.Tensor):
        raise NotSpaceToDepth(f"returns a {type(out).__name__}, not a tensor")
    return out.detach().to(torch.float64), size, size


def probe(module: nn.Module, channels: int = 3) -> SpaceToDepthInfo:
    """Run ``module`` (weightless, or whose weights do not matter) and read what it computes.

    Args:
        module (nn.Module): The module; run in eval mode on a copy.
        channels (int): Input channels ``C``.

    Returns:
        (SpaceToDepthInfo): Block size, named order (or None) and the channel map.

    Raises:
        NotSpaceToDepth: The output is not a space-to-depth of the input (the message says why).
    """
    module = copy.deepcopy(module).eval()
    try:
        out, h, w = _run(module, channels)
    except NotSpaceToDepth:
        raise
    except Exception as error:  # noqa: BLE001 - any failure to run means: not something we can recognise
        raise NotSpaceToDepth(f"cannot run on a {channels}x{PROBE_SIZE}x{PROBE_SIZE} image ({type(error).__name__})")
    if out.ndim != 4 or out.shape[0] != 1:
        raise NotSpaceToDepth(f"output shape {tuple(out.shape)} is not (1, C', H', W')")
    _, oc, oh, ow = out.shape
    bs = h // oh if oh else 0
    if bs < 2 or oh * bs != h or ow * bs != w or oc != channels * bs * bs:
        raise NotSpaceToDepth(f"maps {channels}x{h}x{w} to {oc}x{oh}x{ow}, not C*bs*bs x H/bs x W/bs")
    rows = torch.arange(oh, dtype=torch.float64).view(oh, 1) * bs
    cols = torch.arange(ow, dtype=torch.float64).view(1, ow) * bs
    channel_map = []
    for k in range(oc):
        first = int(out[0, k, 0, 0])
        c, rest = divmod(first, h * w)
        dy, dx = divmod(rest, w)
        expected = (c * h + rows + dy) * w + cols + dx
        if not (0 <= c < channels and dy < bs and dx < bs and torch.equal(out[0, k], expected)):
            raise NotSpaceToDepth(f"output channel {k} is not one pixel phase of one input channel")
        channel_map.append((c, dy, dx))
    if len(set(channel_map)) != oc:
        raise NotSpaceToDepth("some input pixels are read twice and others never")
    order = next(
        (
            o
            for o in ORDERS
            if all(channel_index(c, dy, dx, channels, bs, o) == k for k, (c, dy, dx) in enumerate(channel_map))
        ),
        None,
    )
    return SpaceToDepthInfo(bs, order, channels, tuple(channel_map))


def recognize(module: nn.Module, channels: int = 3) -> SpaceToDepthInfo | None:
    """``probe(module, channels)``, or None when the module is not a space-to-depth."""
    try:
        return probe(module, channels)
    except NotSpaceToDepth:
        return None


def slicing_of(focus: nn.Module, channels: int) -> SpaceToDepthInfo:
    """Probe the slicing of a ``Focus``-like module (``forward = conv(slice(x))``): its ``conv`` replaced by identity.

    Raises:
        NotSpaceToDepth: The slicing is not a space-to-depth.
    """
    shell = copy.copy(focus)
    shell._modules = {**focus._modules, "conv": nn.Identity()}
    shell._parameters, shell._buffers = {}, {}
    return probe(shell, channels)
