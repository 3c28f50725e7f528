"""Weight remapping between a strided conv and space-to-depth + conv: pure functions, no modules.

Notation (GUIDE section 1): ``bs`` block size, ``ch(c, dy, dx)`` the channel order (see ``orders.py``).

* ``focus_to_conv_weight``: ``w[O, C*bs*bs, kh, kw] -> W[O, C, bs*kh, bs*kw]`` with
  ``W[o, c, bs*u + dy, bs*v + dx] = w[o, ch(c, dy, dx), u, v]``. Space-to-depth then a stride-``s`` conv with
  padding ``p`` equals one conv with weight ``W``, stride ``bs*s`` and padding ``bs*p``.
* ``conv_to_focus_weight``: its exact inverse.
* ``strided_conv_to_s2d`` / ``s2d_to_strided_conv``: the general case, any strided conv, by zero-padding the
  kernel, with explicit (possibly asymmetric, possibly negative = crop) padding of the space-to-depth output.

Every function is a permutation of values (plus exact zeros), so results are bit-identical in every dtype and
round trips are lossless. All work on any device and dtype and never modify their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .orders import CHANNEL_LAYOUT, check_block_size, check_order

_CANONICAL = ("c", "y", "x")


def _pair(value: int | tuple[int, ...], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_weight(weight: torch.Tensor, name: str) -> None:
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a 4-D conv weight (out, in, kh, kw), got {shape}")


def focus_to_conv_weight(weight: torch.Tensor, block_size: int = 2, order: str = "yolov5") -> torch.Tensor:
    """Map a conv weight that reads space-to-depth channels to the equivalent strided conv weight.

    Args:
        weight (torch.Tensor): Shape (O, C*bs*bs, kh, kw), the conv after space-to-depth.
        block_size (int): Space-to-depth block size ``bs``.
        order (str): Channel order of the space-to-depth, one of ``yolov5``, ``timm``, ``pixel_unshuffle``.

    Returns:
        (torch.Tensor): Shape (O, C, bs*kh, bs*kw), same dtype and device.
    """
    _check_weight(weight, "weight")
    bs, layout = check_block_size(block_size), CHANNEL_LAYOUT[check_order(order)]
    out_ch, in_ch, kh, kw = weight.shape
    if in_ch % (bs * bs):
        raise ValueError(
            f"weight has {in_ch} input channels, not a multiple of block_size**2 = {bs * bs}: "
            "it does not read a space-to-depth output of this block size"
        )
    sizes = {"c": in_ch // (bs * bs), "y": bs, "x": bs}
    split = weight.reshape(out_ch, *(sizes[a] for a in layout), kh, kw)
    canonical = split.permute(0, *(1 + layout.index(a) for a in _CANONICAL), 4, 5)  # (O, C, dy, dx, kh, kw)
    return canonical.permute(0, 1, 4, 2, 5, 3).reshape(out_ch, sizes["c"], kh * bs, kw * bs)


def conv_to_focus_weight(weight: torch.Tensor, block_size: int = 2, order: str = "yolov5") -> torch.Tensor:
    """Exact inverse of ``focus_to_conv_weight``.

    Args:
        weight (torch.Tensor): Shape (O, C, bs*kh, bs*kw), a conv of stride ``bs`` (padding a multiple of ``bs``).
        block_size (int): Space-to-depth block size ``bs``.
        order (str): Channel order of the space-to-depth.

    Returns:
        (torch.Tensor): Shape (O, C*bs*bs, kh, kw), same dtype and device.

    Raises:
        ValueError: If the kernel size is not a multiple of ``block_size`` (use ``strided_conv_to_s2d``).
    """
    _check_weight(weight, "weight")
    bs, layout = check_block_size(block_size), CHANNEL_LAYOUT[check_order(order)]
    out_ch, in_ch, big_h, big_w = weight.shape
    if big_h % bs or big_w % bs:
        raise ValueError(
            f"kernel {big_h}x{big_w} is not a multiple of block_size {bs}: no plain space-to-depth form; "
            "use strided_conv_to_s2d, which zero-pads the kernel"
        )
    kh, kw = big_h // bs, big_w // bs
    canonical = weight.reshape(out_ch, in_ch, kh, bs, kw, bs).permute(0, 1, 3, 5, 2, 4)  # (O, C, dy, dx, kh, kw)
    split = canonical.permute(0, *(1 + _CANONICAL.index(a) for a in layout), 4, 5)
    return split.reshape(out_ch, in_ch * bs * bs, kh, kw)


@dataclass(frozen=True)
class SpaceToDepthForm:
    """A strided conv rewritten as space-to-depth + pad + stride-1 conv.

    Attributes:
        weight (torch.Tensor): Shape (O, C*bs*bs, kh, kw), the stride-1 conv weight.
        block_size (int): Space-to-depth block size (the original stride).
        order (str): Channel order of the space-to-depth.
        pad (tuple[int, int, int, int]): ``F.pad`` amounts (left, right, top, bottom) applied to the
            space-to-depth output; negative values crop.
    """

    weight: torch.Tensor
    block_size: int
    order: str
    pad: tuple[int, int, int, int]

    @property
    def symmetric_padding(self) -> tuple[int, int] | None:
        """(pad_h, pad_w) when the padding can be done by the conv itself, else None."""
        left, right, top, bottom = self.pad
        if left == right >= 0 and top == bottom >= 0:
            return top, left
        return None


def _s2d_pad_1d(kernel: int, stride: int, padding: int) -> tuple[int, int, int, int]:
    """(zeros before, zeros after, pad before, pad after) along one axis, for input sizes divisible by stride."""
    before = (-padding) % stride  # zero taps so that the padding becomes a multiple of the stride
    after = -(kernel + before) % stride
    k = (kernel + before + after) // stride
    pad_before = (padding + before) // stride
    pad_after = (2 * padding - kernel) // stride + k - pad_before
    return before, after, pad_before, pad_after


def strided_conv_to_s2d(
    weight: torch.Tensor,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] = 0,
    order: str = "yolov5",
) -> SpaceToDepthForm:
    """Rewrite any conv of stride ``s`` as space-to-depth(``s``) + pad + stride-1 conv, exactly.

    The kernel is zero-padded so that the padding and the kernel become multiples of ``s`` (GUIDE section 1); the
    result has the same output shape for every input whose height and width are multiples of ``s``. Example:
    ResNet's 7x7 stride 2 padding 3 becomes space-to-depth(2), pad (2, 1) and a 4x4 conv.

    Args:
        weight (torch.Tensor): Shape (O, C, KH, KW).
        stride (int | tuple[int, int]): Conv stride; both entries must be equal and >= 2.
        padding (int | tuple[int, int]): Conv zero padding (symmetric, per axis).
        order (str): Channel order of the space-to-depth.

    Returns:
        (SpaceToDepthForm): Weight (O, C*s*s, ceil((KH+rh)/s), ceil((KW+rw)/s)) and the pad to apply.
    """
    _check_weight(weight, "weight")
    sh, sw = _pair(stride, "stride")
    if sh != sw:
        raise ValueError(f"stride {sh}x{sw} differs per axis: space-to-depth needs one block size")
    bs = check_block_size(sh)
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {(ph, pw)}")
    zh0, zh1, top, bottom = _s2d_pad_1d(weight.shape[2], bs, ph)
    zw0, zw1, left, right = _s2d_pad_1d(weight.shape[3], bs, pw)
    padded = F.pad(weight, (zw0, zw1, zh0, zh1)) if (zh0, zh1, zw0, zw1) != (0, 0, 0, 0) else weight
    return SpaceToDepthForm(conv_to_focus_weight(padded, bs, order), bs, order, (left, right, top, bottom))


def _fold_1d(taps_zero: torch.Tensor, block_size: int, pad_before: int, pad_after: int) -> tuple[int, int, int]:
    """(trim before, trim after, padding) of the smallest symmetric strided conv equal to one s2d axis, or raise.

    A negative trim adds that many zero taps. Changing the leading taps by ``t0`` keeps the alignment if the
    padding changes by ``t0`` too; the output length then matches the space-to-depth form when
    ``(t1 - t0) // bs == pad_after - pad_before``. Only zero taps are ever dropped, so the result is exact.
    """
    size = taps_zero.numel()
    lead = int(torch.cumprod(taps_zero.to(torch.int64), 0).sum())  # leading all-zero taps
    trail = int(torch.cumprod(taps_zero.flip(0).to(torch.int64), 0).sum())  # trailing all-zero taps
    most_added = block_size * (abs(pad_after - pad_before) + max(0, -pad_before) + 1)  # enough for any pad, crops too
    fits = [
        (t0, t1)
        for t0 in range(-most_added, min(lead, block_size * pad_before, size - 1) + 1)
        for t1 in range(-most_added, min(trail, size - 1 - max(t0, 0)) + 1)
        if (t1 - t0) // block_size == pad_after - pad_before
    ]
    t0, t1 = max(fits, key=lambda t: (t[0] + t[1], t[0]))  # smallest kernel, then the least padding
    return t0, t1, block_size * pad_before - t0


def s2d_to_strided_conv(
    weight: torch.Tensor,
    block_size: int,
    pad: tuple[int, int, int, int] | None = None,
    order: str = "yolov5",
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Fold space-to-depth + pad + stride-1 conv back into one conv of stride ``block_size``, exactly.

    Inverse of ``strided_conv_to_s2d``: zero taps that were added are dropped again, so a round trip is
    bit-identical. Other pads get zero taps added where needed (e.g. pad (1, 0) of a 2-tap s2d kernel with no zero
    tap becomes a 5-tap conv with padding 2). With symmetric ``pad = (p, p, p, p)``
    this is ``focus_to_conv_weight`` with padding ``bs*p``.

    Args:
        weight (torch.Tensor): Shape (O, C*bs*bs, kh, kw), the stride-1 conv weight.
        block_size (int): Space-to-depth block size ``bs``.
        pad (tuple[int, int, int, int] | None): (left, right, top, bottom) applied before the conv; None = no pad.
        order (str): Channel order of the space-to-depth.

    Returns:
        (tuple[torch.Tensor, tuple[int, int]]): Weight (O, C, KH, KW) and its symmetric (pad_h, pad_w).

    Raises:
        ValueError: If ``weight`` is not a conv weight reading space-to-depth channels of this block size.
    """
    big = focus_to_conv_weight(weight, block_size, order)
    left, right, top, bottom = pad or (0, 0, 0, 0)
    zero = big == 0
    h0, h1, ph = _fold_1d(zero.all(dim=3).all(dim=1).all(dim=0), block_size, top, bottom)
    w0, w1, pw = _fold_1d(zero.all(dim=2).all(dim=1).all(dim=0), block_size, left, right)
    grown = F.pad(big, (max(-w0, 0), max(-w1, 0), max(-h0, 0), max(-h1, 0)))  # zero taps to add, if any
    h0, h1, w0, w1 = max(h0, 0), max(h1, 0), max(w0, 0), max(w1, 0)  # zero taps to drop
    return grown[:, :, h0 : grown.shape[2] - h1, w0 : grown.shape[3] - w1].contiguous(), (ph, pw)
