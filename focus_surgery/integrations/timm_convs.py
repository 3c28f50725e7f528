"""timm's Conv2d subclasses taught to the module surgery, so ``convert`` is exact on every timm stem, both ways.

* ``Conv2dSame`` (TF "SAME"): ``SpaceToDepthConv2dSame`` pads as the original would, then up to whole blocks, and runs
  space-to-depth + a stride-1 conv (the kernel with zero taps appended): exact at every input size, odd ones too; it
  folds back to the very ``Conv2dSame``, so the original checkpoint loads again.
* ``StdConv2d`` / ``ScaledStdConv2d`` (and ``...Same``): zero taps would change the standardisation statistics, so
  ``SpaceToDepthStdConv`` keeps the original conv, standardises as it does, then gathers the standardised taps into
  space-to-depth layout (a permutation plus zeros): exact in every dtype; folding back returns the original conv.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from torch import nn

from ..layers import SpaceToDepth
from ..remap import conv_to_focus_weight, focus_to_conv_weight, strided_conv_to_s2d
from ..stems import ConversionError, register_conv_type
from ..stems.build import new_conv2d


def _blocks_pad(size: int, kernel: int, stride: int) -> list[int]:
    """(before, after) zeros along one axis: TF-SAME padding, then up to the blocks the s2d conv reads."""
    out = (size + stride - 1) // stride  # SAME: ceil(size / stride) outputs
    total = max((out - 1) * stride + kernel - size, 0)
    taps = (kernel + stride - 1) // stride  # kernel of the stride-1 conv over blocks
    return [total // 2, stride * (out + taps - 1) - size - total // 2]


@torch.fx.wrap  # sizes are Python ints here: a leaf in torch.fx graphs, as timm's own pad_same
def pad_same_to_blocks(x: torch.Tensor, kernel: list[int], stride: int) -> torch.Tensor:
    """TF-SAME zero padding of a ``kernel`` / ``stride`` conv, then zeros at the end up to whole ``stride`` blocks.

    Shapes:
        Input (N, C, H, W), any H and W; output (N, C, s*(ceil(H/s) + ceil(kh/s) - 1), ...) for stride ``s``.
    """
    top_bottom = _blocks_pad(x.shape[-2], kernel[0], stride)
    left_right = _blocks_pad(x.shape[-1], kernel[1], stride)
    return F.pad(x, left_right + top_bottom)


def _check_same_conv(conv: nn.Conv2d, order: str) -> None:
    if conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
        raise ConversionError(
            f"{type(conv).__name__} with stride {conv.stride}, dilation {conv.dilation} has no exact "
            "space-to-depth form"
        )
    if conv.groups != 1 and order != "pixel_unshuffle":
        raise ConversionError(f"groups={conv.groups} needs order='pixel_unshuffle'")


class SpaceToDepthConv2dSame(nn.Module):
    """timm ``Conv2dSame`` (TF "SAME", stride ``s``) as SAME padding + space-to-depth(``s``) + stride-1 conv, exactly.

    Args:
        conv (Conv2dSame): The strided conv; its kernel gets zero taps appended up to a multiple of ``s``.
        order (str): Space-to-depth channel order.

    Shapes:
        Input (N, C, H, W), any H and W (as the original); output (N, O, ceil(H/s), ceil(W/s)), as the original.
    """

    accepts_any_input_size = True  # pads to whole blocks itself: the conversion narrows no input size

    def __init__(self, conv: nn.Conv2d, order: str):
        super().__init__()
        _check_same_conv(conv, order)
        stride = conv.stride[0]
        self.kernel_size = list(conv.kernel_size)
        weight = conv.weight.detach()
        zeros = [-k % stride for k in self.kernel_size]
        weight = conv_to_focus_weight(F.pad(weight, (0, zeros[1], 0, zeros[0])), stride, order)
        self.block_size, self.order = stride, order
        self.s2d = SpaceToDepth(stride, order)
        self.conv = new_conv2d(conv, weight, 1, (0, 0))
        self.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.s2d(pad_same_to_blocks(x, self.kernel_size, self.block_size)))

    def to_strided_conv(self) -> tuple[nn.Module, str]:
        """The ``Conv2dSame`` this computes, for ``convert(to="conv")``; raises if trained taps are not zero."""
        big = focus_to_conv_weight(self.conv.weight.detach(), self.block_size, self.order)
        kh, kw = self.kernel_size
        if big[:, :, kh:].any() or big[:, :, :, kw:].any():
            raise ConversionError(
                f"the zero taps added to the {kh}x{kw} Conv2dSame kernel are no longer zero (trained?): "
                "no exact Conv2dSame form"
            )
        plain = new_conv2d(self.conv, big[:, :, :kh, :kw].contiguous(), self.block_size, 0)  # parameters as ours
        conv = Conv2dSame(plain.in_channels, plain.out_channels, (kh, kw), self.block_size, groups=plain.groups)
        conv.weight, conv.bias = plain.weight, plain.bias
        return conv.train(self.training), f"Conv2dSame({kh}x{kw}, stride={self.block_size}, padding=SAME)"

    def extra_repr(self) -> str:
        return "padding=SAME (any input size)"


class SpaceToDepthStdConv(nn.Module):
    """A weight-standardised strided conv (timm ``StdConv2d``) run as space-to-depth + stride-1 conv, exactly.

    Args:
        conv (StdConv2d): The strided conv; kept as ``self.conv`` with its parameters (registered first, so input
            shape inference still sees the image channels).
        order (str): Space-to-depth channel order.

    Shapes:
        Input (N, C, H, W), H and W divisible by the stride ``s``; output as ``conv``'s.
    """

    def __init__(self, conv: nn.Conv2d, order: str):
        super().__init__()
        _check_same_conv(conv, order)
        if isinstance(conv.padding, str):
            raise ConversionError(f"{type(conv).__name__} with padding {conv.padding!r}: no exact space-to-depth form")
        self.conv = conv
        self.block_size, self.order = conv.stride[0], order
        self.s2d = SpaceToDepth(conv.stride[0], order)
        self.same_pad = bool(getattr(conv, "same_pad", False))  # timm's ...Same convs pad dynamically
        self.kernel_size = list(conv.kernel_size)
        # Tap t of the flattened original kernel lands where this index holds t + 1; 0 marks an added zero tap.
        taps = torch.arange(1, conv.weight[0].numel() + 1, dtype=torch.float64).reshape(1, *conv.weight.shape[1:])
        form = strided_conv_to_s2d(taps, conv.stride, 0 if self.same_pad else conv.padding, order)
        self.register_buffer("tap_index", form.weight.round().long().flatten(), persistent=False)
        self.kernel_shape = [conv.out_channels] + list(form.weight.shape[1:])
        self.pad = [0, 0, 0, 0] if self.same_pad else list(form.pad)

    @property
    def accepts_any_input_size(self) -> bool:
        """True for the dynamic-SAME convs (padded to whole blocks); else H and W must be divisible by the stride."""
        return self.same_pad

    def gain(self) -> Optional[torch.Tensor]:
        """Per-channel scale applied by the standardisation (None: plain weight standardisation)."""
        return None

    def standardized_weight(self) -> torch.Tensor:
        """(O, C/g, K, K): the wrapped conv's effective weight, computed as it computes it."""
        weight = self.conv.weight
        flat = weight.reshape(1, self.conv.out_channels, -1)
        flat = F.batch_norm(flat, None, None, self.gain(), training=True, momentum=0.0, eps=self.conv.eps)
        return flat.reshape_as(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = F.pad(self.standardized_weight().reshape(self.conv.out_channels, -1), (1, 0))  # column 0 = zero tap
        weight = flat[:, self.tap_index].reshape(self.kernel_shape)
        if self.same_pad:
            x = self.s2d(pad_same_to_blocks(x, self.kernel_size, self.block_size))
        else:
            x = F.pad(self.s2d(x), self.pad)
        return F.conv2d(x, weight, self.conv.bias, 1, 0, 1, self.conv.groups)

    def to_strided_conv(self) -> tuple[nn.Module, str]:
        """The original strided conv (a copy), for ``convert(to="conv")``."""
        conv = copy.deepcopy(self.conv)
        k = "x".join(map(str, conv.kernel_size))
        return conv, f"{type(conv).__name__}({k}, stride={conv.stride[0]}, padding={conv.padding})"

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel_shape)}, pad={'SAME' if self.same_pad else tuple(self.pad)}"


class SpaceToDepthScaledStdConv(SpaceToDepthStdConv):
    """``SpaceToDepthStdConv`` for timm ``ScaledStdConv2d(Same)`` (NF-Nets): standardisation scaled by gain * scale."""

    def gain(self) -> Optional[torch.Tensor]:
        return (self.conv.gain * self.conv.scale).view(-1)


def _to_s2d(conv: nn.Conv2d, to: str, order: str) -> tuple[nn.Module, str]:
    """The space-to-depth form of a timm conv and its description (a converter for ``register_conv_type``)."""
    if isinstance(conv, Conv2dSame):
        module = SpaceToDepthConv2dSame(conv, order)
        kernel, pad = module.conv.kernel_size, "SAME"
    else:
        scaled = isinstance(conv, (ScaledStdConv2d, ScaledStdConv2dSame))
        module = (SpaceToDepthScaledStdConv if scaled else SpaceToDepthStdConv)(copy.deepcopy(conv), order)
        kernel, pad = module.kernel_shape[2:], "SAME" if module.same_pad else tuple(module.pad)
    k = "x".join(map(str, kernel))
    form = f"{type(module).__name__}(block_size={conv.stride[0]}, order={order}, k={k}, pad={pad})"
    return module.train(conv.training), form


def register_conv_types() -> None:
    """Teach ``focus_surgery.convert`` timm's Conv2d subclasses (idempotent)."""
    for cls in (Conv2dSame, StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame):
        register_conv_type(cls, _to_s2d)
