"""timm's Conv2d subclasses taught to the module surgery, so ``convert`` is exact on every timm stem.

* ``Conv2dSame`` (TF "SAME" padding, computed from the input size): for inputs whose size the stride divides,
  which space-to-depth needs anyway, its padding is fixed, ``(k - s)`` split with the extra pixel at the end. That
  equals a plain conv with symmetric padding and one leading zero tap per axis, whose space-to-depth form the core
  builds. Folded back it is a plain ``nn.Conv2d`` (exact for those input sizes).
* ``StdConv2d`` / ``ScaledStdConv2d`` (weight standardisation, BiT ResNetV2 and NF-Nets): zero-padding the kernel
  would change the standardisation statistics, and baking the standardised weight into a plain conv is exact
  only in the dtype it was baked in. ``SpaceToDepthStdConv`` keeps the original conv and its parameters,
  standardises exactly as it does, then moves the standardised taps into space-to-depth layout with a fixed
  gather (a permutation plus zeros). Folding back returns the original conv, untouched.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, ScaledStdConv2d, StdConv2d
from torch import nn

from ..layers import SpaceToDepth
from ..remap import strided_conv_to_s2d
from ..surgery import ConversionError, register_conv_type, space_to_depth_form


def _plain_conv(weight: torch.Tensor, conv: nn.Conv2d, stride, padding: tuple[int, int]) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``weight`` and ``conv``'s bias, groups, mode and requires_grad."""
    plain = nn.Conv2d(
        weight.shape[1] * conv.groups, conv.out_channels, tuple(weight.shape[2:]), stride, padding,
        groups=conv.groups, bias=conv.bias is not None, device=weight.device, dtype=weight.dtype,
    )
    plain.weight = nn.Parameter(weight.detach().clone(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        plain.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=conv.bias.requires_grad)
    return plain.train(conv.training)


def same_padding_as_plain_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` equal to a TF-"SAME" ``Conv2dSame`` on inputs whose height and width its stride divides.

    Per axis the SAME padding is then ``max(k - s, 0)``, ``before = total // 2`` and ``after = total - before``;
    symmetric padding ``after`` plus ``after - before`` leading zero taps reads exactly the same pixels.
    """
    if conv.dilation != (1, 1):
        raise ConversionError(f"Conv2dSame with dilation {conv.dilation} has no exact space-to-depth form")
    zeros, padding = [], []
    for kernel, stride in zip(conv.kernel_size, conv.stride):
        total = max(kernel - stride, 0)
        before, after = total // 2, total - total // 2
        zeros.append(after - before)
        padding.append(after)
    weight = F.pad(conv.weight.detach(), (zeros[1], 0, zeros[0], 0))
    return _plain_conv(weight, conv, conv.stride, (padding[0], padding[1]))


def _conv2d_same_to_s2d(conv: nn.Conv2d, to: str, order: str) -> tuple[nn.Module, str]:
    return space_to_depth_form(same_padding_as_plain_conv(conv), to, order)


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
        if conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1] or isinstance(conv.padding, str):
            raise ConversionError(
                f"{type(conv).__name__} with stride {conv.stride}, dilation {conv.dilation}, padding "
                f"{conv.padding!r} has no exact space-to-depth form"
            )
        if conv.groups != 1 and order != "pixel_unshuffle":
            raise ConversionError(f"groups={conv.groups} needs order='pixel_unshuffle'")
        self.conv = conv
        self.s2d = SpaceToDepth(conv.stride[0], order)
        # Tap t of the flattened original kernel lands where this index holds t + 1; 0 marks an added zero tap.
        taps = torch.arange(1, conv.weight[0].numel() + 1, dtype=torch.float64).reshape(1, *conv.weight.shape[1:])
        form = strided_conv_to_s2d(taps, conv.stride, conv.padding, order)
        self.register_buffer("tap_index", form.weight.round().long().flatten(), persistent=False)
        self.kernel_shape = [conv.out_channels] + list(form.weight.shape[1:])
        self.pad = list(form.pad)

    @property
    def block_size(self) -> int:
        return self.s2d.block_size

    @property
    def order(self) -> str:
        return self.s2d.order

    def gain(self) -> Optional[torch.Tensor]:
        """Per-channel scale applied by the standardisation (None: plain weight standardisation)."""
        return None

    def standardized_weight(self) -> torch.Tensor:
        """(O, C/g, K, K): the wrapped conv's effective weight, computed as it computes it."""
        weight = self.conv.weight
        flat = F.batch_norm(
            weight.reshape(1, self.conv.out_channels, -1), None, None, weight=self.gain(), training=True,
            momentum=0.0, eps=self.conv.eps,
        )
        return flat.reshape_as(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = F.pad(self.standardized_weight().reshape(self.conv.out_channels, -1), (1, 0))  # column 0 = zero tap
        weight = flat[:, self.tap_index].reshape(self.kernel_shape)
        return F.conv2d(F.pad(self.s2d(x), self.pad), weight, self.conv.bias, 1, 0, 1, self.conv.groups)

    def to_strided_conv(self) -> tuple[nn.Module, str]:
        """The original strided conv (a copy), for ``convert(to="conv")``."""
        conv = copy.deepcopy(self.conv)
        k = "x".join(map(str, conv.kernel_size))
        return conv, f"{type(conv).__name__}({k}, stride={conv.stride[0]}, padding={conv.padding})"

    def extra_repr(self) -> str:
        return f"kernel={tuple(self.kernel_shape)}, pad={tuple(self.pad)}"


class SpaceToDepthScaledStdConv(SpaceToDepthStdConv):
    """``SpaceToDepthStdConv`` for timm ``ScaledStdConv2d`` (NF-Nets): standardisation scaled by ``gain * scale``."""

    def gain(self) -> Optional[torch.Tensor]:
        return (self.conv.gain * self.conv.scale).view(-1)


def _std_conv_to_s2d(conv: nn.Conv2d, to: str, order: str) -> tuple[nn.Module, str]:
    cls = SpaceToDepthScaledStdConv if isinstance(conv, ScaledStdConv2d) else SpaceToDepthStdConv
    module = cls(conv=copy.deepcopy(conv), order=order)
    k = "x".join(map(str, module.kernel_shape[2:]))
    form = f"{cls.__name__}(block_size={conv.stride[0]}, order={order}, k={k}, pad={tuple(module.pad)})"
    return module.train(conv.training), form


def register_conv_types() -> None:
    """Teach ``focus_surgery.convert`` timm's Conv2d subclasses (idempotent)."""
    register_conv_type(Conv2dSame, _conv2d_same_to_s2d)
    register_conv_type(StdConv2d, _std_conv_to_s2d)
    register_conv_type(ScaledStdConv2d, _std_conv_to_s2d)
