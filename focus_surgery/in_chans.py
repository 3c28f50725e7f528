"""Adapt a stem conv's pretrained weight to another number of input channels, per pixel phase: a pure function.

A conv reading space-to-depth channels ``(O, C*bs*bs, k, k)`` holds ``bs*bs`` interleaved pixel phases of each
colour, so timm's ``adapt_input_conv`` rule is applied on the equivalent strided conv ``(O, C, bs*k, bs*k)``, where
phases are kernel taps and colours dim 1, then mapped back (the same exact permutations for every order).
"""

from __future__ import annotations

import math

import torch

from .remap import conv_to_focus_weight, focus_to_conv_weight


def adapt_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a plain conv weight (O, C, kh, kw) to (O, in_chans, kh, kw), as timm's rule: 1 channel sums the colours
    (a grey image replicated to C channels gives the same output); otherwise the colours repeat cyclically, cut to
    ``in_chans`` and scaled by ``C / in_chans`` (a replicated input keeps its activation scale). A new tensor."""
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
    """Adapt ``weight`` (O, C*bs*bs, k, k), a conv after space-to-depth(``block_size``, ``order``) of a C-channel
    image, to ``in_chans`` image channels per phase: (O, in_chans*bs*bs, k, k), a new tensor."""
    strided = focus_to_conv_weight(weight, block_size, order)  # (O, C, bs*k, bs*k): phases become kernel taps
    return conv_to_focus_weight(adapt_channels(strided, in_chans), block_size, order)
