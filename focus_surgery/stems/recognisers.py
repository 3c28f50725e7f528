"""Recognition: which modules compute a space-to-depth (alone or before their own conv), and which are conv blocks.

The ``RECOGNISERS`` know our layers and ``nn.PixelUnshuffle``; integrations register their frameworks' classes.
Anything else is recognised by what it computes (``probe``): run on an input whose values encode channel, row and
column (``(c*H + y)*W + x``), each output channel must read one input channel at one pixel phase ``(dy, dx)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConversionError
from ..layers import Focus, SPDConv, SpaceToDepth
from ..limits import check_allocation
from ..orders import ORDERS, channel_index
from .site import SpaceToDepthPart

PROBE_SIZE = 48  # divisible by the block sizes 2, 3, 4, 6, 8, 12, 16, 24
PROBED_BLOCK_SIZES = (2, 3, 4)
BLOCK_EXTRAS = {"bn", "act", "aa", "drop", "norm"}  # children a conv block may have besides `conv`

Recogniser = Callable[[nn.Module], "SpaceToDepthPart | None"]


@dataclass(frozen=True)
class SpaceToDepthInfo:
    """What a probed module computes: ``block_size``, ``order`` (None for a channel order of its own), the input
    ``channels`` the probe used, and ``channel_map``: for each output channel, the ``(c, dy, dx)`` it reads."""

    block_size: int
    order: str | None
    channels: int
    channel_map: tuple[tuple[int, int, int], ...]

    def describe(self) -> str:
        order = self.order or "a channel order of its own (not yolov5, timm or pixel_unshuffle)"
        return f"space-to-depth(block_size={self.block_size}, order={order})"


class NotSpaceToDepth(ConversionError):
    """The probed module does not compute a space-to-depth; the message says what it does instead."""


def probe(module: nn.Module, channels: int = 3) -> SpaceToDepthInfo:
    """Run a copy of ``module`` (weightless, or whose weights do not matter) on ``channels`` channels: what it computes.

    Raises:
        NotSpaceToDepth: The output is not a space-to-depth of the input (the message says why).
    """
    module, size = copy.deepcopy(module).eval(), PROBE_SIZE
    try:
        check_allocation((1, channels, size, size), torch.float64, "the probe input")  # channels may come from a file
        values = torch.arange(channels * size * size, dtype=torch.float64).view(1, channels, size, size)
        tensors = list(module.parameters()) + list(module.buffers())
        dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)  # C*48*48 < 2**24: exact
        with torch.no_grad():
            out = module(values.to(dtype))
    except Exception as error:  # noqa: BLE001 - any failure to run means: not something we can recognise
        raise NotSpaceToDepth(f"cannot run on a {channels}x{size}x{size} image ({type(error).__name__})")
    if not isinstance(out, torch.Tensor):
        raise NotSpaceToDepth(f"returns a {type(out).__name__}, not a tensor")
    out = out.detach().to(torch.float64)
    if out.ndim != 4 or out.shape[0] != 1:
        raise NotSpaceToDepth(f"output shape {tuple(out.shape)} is not (1, C', H', W')")
    _, oc, oh, ow = out.shape
    bs = size // oh if oh else 0
    if bs < 2 or oh * bs != size or ow * bs != size or oc != channels * bs * bs:
        raise NotSpaceToDepth(f"maps {channels}x{size}x{size} to {oc}x{oh}x{ow}, not C*bs*bs x H/bs x W/bs")
    rows = torch.arange(oh, dtype=torch.float64).view(oh, 1) * bs
    cols = torch.arange(ow, dtype=torch.float64).view(1, ow) * bs
    channel_map = []
    for k in range(oc):
        c, rest = divmod(int(out[0, k, 0, 0]), size * size)
        dy, dx = divmod(rest, size)
        expected = (c * size + rows + dy) * size + cols + dx
        if not (0 <= c < channels and dy < bs and dx < bs and torch.equal(out[0, k], expected)):
            raise NotSpaceToDepth(f"output channel {k} is not one pixel phase of one input channel")
        channel_map.append((c, dy, dx))
    if len(set(channel_map)) != oc:
        raise NotSpaceToDepth("some input pixels are read twice and others never")
    named = (o for o in ORDERS if all(channel_index(*m, channels, bs, o) == k for k, m in enumerate(channel_map)))
    return SpaceToDepthInfo(bs, next(named, None), channels, tuple(channel_map))


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


def _ours(module: nn.Module) -> SpaceToDepthPart | None:
    if isinstance(module, (Focus, SPDConv)):
        pad = tuple(module.pad) if isinstance(module, SPDConv) and module.pad is not None else None
        return SpaceToDepthPart(module.s2d.block_size, module.s2d.order, module.conv, pad)
    if isinstance(module, SpaceToDepth):
        return SpaceToDepthPart(module.block_size, module.order)
    if isinstance(module, nn.PixelUnshuffle):
        return SpaceToDepthPart(module.downscale_factor, "pixel_unshuffle")
    return None


RECOGNISERS: list[Recogniser] = [_ours]


def register_recogniser(recogniser: Recogniser) -> None:
    """Ask ``recogniser(module) -> SpaceToDepthPart | None`` before recognising by computation (idempotent)."""
    if recogniser not in RECOGNISERS:
        RECOGNISERS.append(recogniser)


def is_conv_block(module: nn.Module) -> bool:
    """A conv + norm + activation block (Ultralytics ``Conv``, timm ``ConvNormAct``, YOLOv5 ``Conv``, ours)."""
    names = [name for name, _ in module.named_children()]
    return bool(names) and names[0] == "conv" and type(module.conv) is nn.Conv2d and set(names[1:]) <= BLOCK_EXTRAS


def is_conv_like(module: nn.Module | None) -> bool:
    """A plain ``nn.Conv2d`` or a conv block: what a space-to-depth can fold into."""
    return module is not None and (type(module) is nn.Conv2d or is_conv_block(module))


def conv_of(block: nn.Module) -> nn.Conv2d:
    """The ``nn.Conv2d`` of a conv block, or the conv itself."""
    return block if isinstance(block, nn.Conv2d) else block.conv


def folds_itself(module: nn.Module) -> bool:
    """An integration's space-to-depth module that converts itself back (``to_strided_conv()`` protocol)."""
    return callable(getattr(module, "to_strided_conv", None))


def _probed(info: SpaceToDepthInfo, what: str) -> SpaceToDepthPart:
    problem = None if info.order else f"{what} computes {info.describe()}: refused, not converted"
    return SpaceToDepthPart(info.block_size, info.order or "", problem=problem)


def _focus_like(module: nn.Module) -> SpaceToDepthPart | None:
    """A module whose only child is a conv block and whose own code slices its input into a space-to-depth."""
    names = [name for name, _ in module.named_children()]
    if names != ["conv"] or not is_conv_block(module.conv) or next(module.named_parameters(recurse=False), None):
        return None
    for bs in PROBED_BLOCK_SIZES:
        channels, rest = divmod(module.conv.conv.in_channels, bs * bs)
        try:
            info = slicing_of(module, channels) if channels and not rest else None
        except NotSpaceToDepth:
            continue
        if info is not None and info.block_size == bs:
            part = _probed(info, f"its slicing ({type(module).__name__})")
            return SpaceToDepthPart(bs, part.order or "yolov5", module.conv, None, part.problem)
    return None


ALONE = nn.Identity()  # ``feeds`` default: no conv known, a weightless layer is run on one channel


def part_of(module: nn.Module, feeds: nn.Module | None = ALONE) -> SpaceToDepthPart | None:
    """What space-to-depth ``module`` computes, else None. ``feeds``: the conv block it feeds (a weightless layer of
    unknown type is run for that conv's channels); None: it feeds no conv (not probed); ``ALONE``: run on one channel.
    """
    for recogniser in RECOGNISERS:
        part = recogniser(module)
        if part is not None:
            return part
    if folds_itself(module):
        return None
    focus = _focus_like(module)
    if focus is not None or list(module.children()) or any(True for _ in [*module.parameters(), *module.buffers()]):
        return focus
    if feeds is ALONE:
        info = recognize(module, 1)
        return SpaceToDepthPart(info.block_size, info.order or "") if info is not None else None
    if not is_conv_like(feeds):
        return None
    for bs in PROBED_BLOCK_SIZES:
        channels, rest = divmod(conv_of(feeds).in_channels, bs * bs)
        info = recognize(module, channels) if channels and not rest else None
        if info is not None and info.block_size == bs:
            return _probed(info, type(module).__name__)
    return None
