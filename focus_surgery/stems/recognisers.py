"""Recognition: which modules compute a space-to-depth (alone or before their own conv), and which are conv blocks.

Recognisers are functions ``module -> SpaceToDepthPart | None`` in ``RECOGNISERS``, asked in order; the core knows
only its own layers and ``nn.PixelUnshuffle``. A framework's classes (timm's ``SpaceToDepth``, Ultralytics'
``Focus``) are taught by that framework's integration with ``register_recogniser``. Anything else is recognised by
what it computes (``probe``): a Focus-like module by running its slicing with its conv replaced by an identity, a
weightless layer of unknown type (``ReOrg``, ``Reorg``) by running it for the channels of the conv it feeds.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..layers import Focus, SPDConv, SpaceToDepth
from .probe import NotSpaceToDepth, recognize, slicing_of
from .site import SpaceToDepthPart

BLOCK_EXTRAS = {"bn", "act", "aa", "drop", "norm"}  # children a conv block may have besides `conv`
PROBED_BLOCK_SIZES = (2, 3, 4)

Recogniser = Callable[[nn.Module], "SpaceToDepthPart | None"]


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
    """Ask ``recogniser(module)`` before recognising by computation (idempotent). It returns a ``SpaceToDepthPart``
    for a module it knows (a layer: ``block`` None; a Focus-like module: its conv block), else None."""
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


def _weightless(module: nn.Module) -> bool:
    return not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())


def _probed(info, what: str) -> SpaceToDepthPart:
    problem = None if info.order else f"{what} computes {info.describe()}: refused, not converted"
    return SpaceToDepthPart(info.block_size, info.order or "", problem=problem)


def _focus_like(module: nn.Module) -> SpaceToDepthPart | None:
    """A module whose only child is a conv block and whose own code slices its input into a space-to-depth."""
    names = [name for name, _ in module.named_children()]
    if names != ["conv"] or not is_conv_block(module.conv) or next(module.named_parameters(recurse=False), None):
        return None
    in_channels = module.conv.conv.in_channels
    for bs in PROBED_BLOCK_SIZES:
        channels, rest = divmod(in_channels, bs * bs)
        if not channels or rest:
            continue
        try:
            info = slicing_of(module, channels)
        except NotSpaceToDepth:
            continue
        if info.block_size == bs:
            part = _probed(info, f"its slicing ({type(module).__name__})")
            return SpaceToDepthPart(bs, part.order or "yolov5", module.conv, None, part.problem)
    return None


ALONE = nn.Identity()  # ``feeds`` default: no conv known, a weightless layer is run on one channel


def part_of(module: nn.Module, feeds: nn.Module | None = ALONE) -> SpaceToDepthPart | None:
    """What space-to-depth ``module`` computes, else None.

    Args:
        module (nn.Module): Any module.
        feeds (nn.Module | None): The conv block ``module`` feeds: a weightless layer of unknown type is run for
            that conv's channels; None: it feeds no conv, so it is not probed; ``ALONE``: run on one channel.
    """
    for recogniser in RECOGNISERS:
        part = recogniser(module)
        if part is not None:
            return part
    if folds_itself(module):
        return None
    focus = _focus_like(module)
    if focus is not None or list(module.children()) or not _weightless(module):
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
