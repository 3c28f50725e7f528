"""Every exact form of one stem (a strided conv block, or a Focus / SPDConv / space-to-depth + conv that folds into
one), built by weight remapping: each of ``FORMS``, also with ``+channels_last`` (NHWC input and weights). The conv
block keeps the stem's BatchNorm and activation; only its ``nn.Conv2d`` is new.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import SpaceToDepth
from ..orders import check_block_size
from ..stems import ConversionError, SpaceToDepthPart, part_of, strided_conv_form
from ..stems.build import conv_problem, new_conv2d, stride_one_block, with_conv
from ..stems.recognisers import conv_of, is_conv_like

CHANNELS_LAST_SUFFIX = "+channels_last"


class SliceSpaceToDepth(nn.Module):
    """Space-to-depth by concatenating strided slices, as YOLOv5's ``Focus`` does (order ``yolov5``).

    Shapes:
        Input (N, C, H, W), H and W divisible by ``bs``; output (N, C*bs*bs, H/bs, W/bs).
    """

    def __init__(self, block_size: int = 2):
        super().__init__()
        self.block_size = check_block_size(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs = self.block_size
        return torch.cat([x[..., dy::bs, dx::bs] for dx in range(bs) for dy in range(bs)], 1)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


# The one table of forms: kind -> (space-to-depth channel order, rearrangement for block size bs) + the conv.
FORMS: dict[str, tuple[str | None, type[nn.Module] | None]] = {
    "focus_slices": ("yolov5", SliceSpaceToDepth),  # torch.cat of bs*bs strided slices (YOLOv5's Focus)
    "conv": (None, None),  # one conv of stride bs (YOLOv5 v6.0+)
    "pixel_unshuffle": ("pixel_unshuffle", nn.PixelUnshuffle),  # F.pixel_unshuffle
    "space_to_depth": ("timm", lambda bs: SpaceToDepth(bs, "timm")),  # view / permute / reshape, as TResNet
}
KINDS: tuple[str, ...] = tuple(FORMS)
KIND_OF_ORDER = {order: kind for kind, (order, _) in FORMS.items() if order}


def form_names() -> list[str]:
    """Names of every form: each kind, then each with ``+channels_last`` (e.g. ``conv+channels_last``)."""
    return [*KINDS, *(kind + CHANNELS_LAST_SUFFIX for kind in KINDS)]


class StemForm(nn.Module):
    """One exact form of a stem: optional NHWC input, rearrangement, optional explicit pad, conv block.

    Attributes:
        form (str): Form name (see ``KINDS``, optionally with ``+channels_last``).
        rearrange (nn.Module): Space-to-depth layer, or ``nn.Identity`` for the ``conv`` form.
        pad (list[int] | None): ``F.pad`` amounts (left, right, top, bottom) when the padding is asymmetric.
        conv (nn.Module): The conv block (or bare ``nn.Conv2d``).

    Shapes:
        Input (N, C, H, W), H and W divisible by the stride; output as the original stem's.
    """

    def __init__(self, form: str, rearrange: nn.Module, pad, conv: nn.Module, channels_last: bool = False):
        super().__init__()
        self.form = form
        self.channels_last = channels_last
        self.rearrange = rearrange
        self.pad = list(pad) if pad is not None else None
        self.conv = conv.to(memory_format=torch.channels_last) if channels_last else conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.rearrange(x)
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"form={self.form!r}" + (f", pad={tuple(self.pad)}" if self.pad is not None else "")


def strided_block(stem: nn.Module) -> nn.Module:
    """The stem as one strided conv block: a copy for Focus / SPDConv-like stems, ``stem`` itself if already one.

    Args:
        stem (nn.Module): A Focus-like module (ours, Ultralytics', YOLOv5's, SPDConv), a conv block whose conv has
            stride >= 2, a bare strided ``nn.Conv2d``, or ``nn.Sequential(space_to_depth, conv_block)``.

    Raises:
        ConversionError: The stem has no exact strided-conv form (dilation, groups, asymmetric stride...).
    """
    part = part_of(stem)
    if part is None and isinstance(stem, nn.Sequential) and len(stem) == 2 and is_conv_like(stem[1]):
        first = part_of(stem[0], feeds=stem[1])
        if first is not None and first.block is None:
            part = SpaceToDepthPart(first.block_size, first.order, stem[1], problem=first.problem)
    if part is not None and part.block is not None:
        if part.problem:
            raise ConversionError(part.problem)
        return strided_conv_form(part.block_size, part.order, part.block, part.pad)[0]
    if is_conv_like(stem):
        conv = conv_of(stem)
        if conv.stride[0] != conv.stride[1] or conv.stride[0] < 2:
            raise ConversionError(f"stem conv stride {conv.stride} is not one stride >= 2: no space-to-depth form")
        reason = conv_problem(conv, "yolov5")
        if reason:
            raise ConversionError(reason)
        return stem
    raise ConversionError(f"{type(stem).__name__} is not a Focus, space-to-depth + conv, or strided conv stem")


def build_form(block: nn.Module, form: str) -> StemForm:
    """Form ``form`` (one of ``form_names()``) of ``block`` (a conv block or ``nn.Conv2d`` of stride ``bs`` >= 2,
    see ``strided_block``): a new module (weights copied, never shared), same device, dtype and train mode."""
    kind, _, suffix = form.partition("+")
    if kind not in KINDS or suffix not in ("", CHANNELS_LAST_SUFFIX[1:]):
        raise ValueError(f"unknown stem form {form!r}: use one of {', '.join(form_names())}")
    channels_last = bool(suffix)
    conv = conv_of(block)
    order, rearrangement = FORMS[kind]
    if order is None:
        new_block = with_conv(block, new_conv2d(conv, conv.weight.detach(), conv.stride, conv.padding))
        return StemForm(form, nn.Identity(), None, new_block, channels_last).train(block.training)
    inner, pad, _ = stride_one_block(block, order)
    return StemForm(form, rearrangement(conv.stride[0]), pad, inner, channels_last).train(block.training)


def build_forms(stem: nn.Module, forms: list[str] | None = None) -> dict[str, StemForm]:
    """Every requested exact form of ``stem`` (all of ``form_names()`` by default), keyed by form name."""
    block = strided_block(stem)
    return {form: build_form(block, form) for form in (forms or form_names())}
