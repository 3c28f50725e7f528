"""The one input rule: which input channels and sizes a module accepts, from the stem sites its input meets."""

from __future__ import annotations

import math

import torch
from torch import nn

from .recognisers import folds_itself, part_of


def _scan(module: nn.Module, counts: list[int], any_size: bool) -> nn.Conv2d | None:
    """The first conv of ``module`` (registration order); ``counts`` = [blocks before it, size multiple]."""
    any_size = any_size or bool(getattr(module, "accepts_any_input_size", False))
    if isinstance(module, nn.Conv2d):
        return module
    part = part_of(module)
    if part is not None:  # a space-to-depth: channels and sizes both scale by its block size
        counts[0] *= part.block_size
        counts[1] *= 1 if any_size else part.block_size
        return _scan(part.block, counts, True) if part.block is not None else None
    if folds_itself(module) and isinstance(getattr(module, "block_size", None), int) and not any_size:
        counts[1] *= module.block_size  # its own space-to-depth child may come after its conv
        any_size = True
    for child in module.children():
        found = _scan(child, counts, any_size)
        if found is not None:
            return found
    return None


def input_channels_and_multiple(model: nn.Module) -> tuple[int | None, int]:
    """Input channels of ``model`` (None without a conv) and what its input height and width must be multiples of:
    the product of the block sizes met before the first conv (none inside a module whose ``accepts_any_input_size``
    is true: it pads to whole blocks itself, as timm's SAME convs)."""
    counts = [1, 1]
    conv = _scan(model, counts, False)
    return (conv.in_channels // (counts[0] * counts[0]) if conv is not None else None), counts[1]


def input_multiple(module: nn.Module) -> int:
    """What ``module``'s input height and width must be multiples of (1: any size)."""
    return input_channels_and_multiple(module)[1]


def infer_input_shape(
    model: nn.Module, batch: int = 2, multiple: int = 1, known: tuple[int | None, int] | None = None
) -> tuple[int, int, int, int]:
    """A valid, non-square input shape for ``model`` whose height and width are multiples of ``multiple`` too: timm's
    configured size (rounded up, 299 -> 300 for a space-to-depth(2) stem, unless fixed), Ultralytics' stride, or a
    small size. ``known``: the model's ``input_channels_and_multiple`` when the caller has it already."""
    channels, own = known or input_channels_and_multiple(model)
    if channels is None:
        raise ValueError("cannot infer an input shape (no Conv2d in the model): pass inputs= or input_shape=")
    multiple = math.lcm(own, multiple)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        _, h, w = cfg["input_size"]
        if not cfg.get("fixed_input_size"):
            h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        return batch, channels, h, w  # ViTs only accept their configured size
    stride = getattr(model, "stride", None)
    if isinstance(stride, torch.Tensor) and stride.numel():
        multiple = math.lcm(multiple, int(stride.max()))
    multiple = math.lcm(multiple, 32)
    return batch, channels, 2 * multiple, 3 * multiple
