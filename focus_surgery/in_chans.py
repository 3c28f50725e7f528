"""Adapt a stem conv's pretrained weight to another number of input channels, per pixel phase: a pure function.

timm's ``adapt_input_conv`` sums or repeats input channels of a plain conv weight ``(O, C, k, k)``. A conv that
reads space-to-depth channels ``(O, C*bs*bs, k, k)`` holds ``bs*bs`` pixel phases of each colour, interleaved by
the channel order, so the same rule must be applied to each phase separately. We do it on the equivalent strided
conv ``(O, C, bs*k, bs*k)`` (``focus_to_conv_weight``), where phases are plain kernel taps and colours are dim 1,
then map back: every order and block size is handled by the same exact permutations.

Rule per phase (as timm's for plain convs): 1 channel sums the colours (a grey image replicated to C channels gives
the same output); more or fewer channels repeat the colours cyclically, keep ``in_chans`` of them and scale by
``C / in_chans`` (so a replicated input keeps its activation scale).
"""

from __future__ import annotations

import math

import torch

from .remap import conv_to_focus_weight, focus_to_conv_weight


def adapt_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a plain conv weight (O, C, kh, kw) to (O, in_chans, kh, kw) with the rule above; returns a new tensor."""
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
    if weight.ndim != 4:
        raise ValueError(f"weight must be a 4-D conv weight (out, in, kh, kw), got {tuple(weight.shape)}")
    base = weight.shape[1]
    if in_chans == base:
        return weight.clone()
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeated = weight.repeat(1, math.ceil(in_chans / base), 1, 1)[:, :in_chans]
    return repeated * (base / in_chans)


def adapt_s2d_input_channels(weight: torch.Tensor, in_chans: int, block_size: int, order: str = "timm") -> torch.Tensor:
    """Adapt the weight of a conv that reads space-to-depth channels to ``in_chans`` image channels, per phase.

    Args:
        weight (torch.Tensor): Shape (O, C*bs*bs, k, k): the conv after space-to-depth(``bs``) of a C-channel image.
        in_chans (int): Image channels of the target model.
        block_size (int): Space-to-depth block size ``bs``.
        order (str): Channel order of the space-to-depth (``yolov5``, ``timm`` or ``pixel_unshuffle``).

    Returns:
        (torch.Tensor): Shape (O, in_chans*bs*bs, k, k), same dtype and device; ``weight`` is not modified.
    """
    strided = focus_to_conv_weight(weight, block_size, order)  # (O, C, bs*k, bs*k): phases become kernel taps
    return conv_to_focus_weight(adapt_channels(strided, in_chans), block_size, order)
