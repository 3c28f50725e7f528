"""Convert the Focus stem of a plain state dict (no model object), like timm's ``checkpoint_filter_fn``.

A state dict has no strides or paddings, so the stem is recognised by its key layout:

* Focus (YOLOv5 / Ultralytics / ours): ``P.conv.conv.weight`` (O, C*bs*bs, k, k) and ``P.conv.bn.*``;
* its conv form (YOLOv5 v6.0+, Ultralytics ``Conv``): ``P.conv.weight`` (O, C, bs*k, bs*k) and ``P.bn.*``;
* a weightless space-to-depth row before a conv block (yolov7 / YOLOR ``ReOrg``): ``P.conv.weight`` (O, C*bs*bs, k, k)
  and ``P.bn.*`` ("reorg": converts to conv with the same keys).

Where the file says more than its keys (timm's ``arch``: TResNet's ``body.s2d`` + ``body.conv1``), the caller knows
the stem conv's key and that the space-to-depth before it is weightless: ``stem_at`` reads the stem there, in either
form, and both directions keep the keys (only the weight changes).

The stem is found by these layouts (``find_stem``), whatever the order of the keys (a ``.safetensors`` file has its own
order). Every other entry is passed through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .remap import conv_to_focus_weight, focus_to_conv_weight


@dataclass
class StemKeys:
    """Where the stem is: ``prefix`` (e.g. ``model.0``), its form, and its weight's key and shape."""

    prefix: str
    form: str  # "focus" | "conv" | "reorg"
    weight_key: str
    shape: list[int]
    weightless: bool = False  # a conv form whose space-to-depth form is "reorg" (same keys), not a Focus module


def _layout(key: str, shape: list[int], in_channels: int, block_size: int) -> StemKeys | None:
    """The stem form of conv weight ``key`` if its layout is one a stem has (it reads the image), else None."""
    if key.endswith(".conv.conv.weight") and shape[1] == in_channels * block_size**2:
        return StemKeys(key[: -len(".conv.conv.weight")], "focus", key, shape)
    if key.endswith(".conv.weight") and shape[1] == in_channels and shape[2] % block_size == 0 == shape[3] % block_size:
        return StemKeys(key[: -len(".conv.weight")], "conv", key, shape)
    if key.endswith(".conv.weight") and shape[1] == in_channels * block_size**2:
        # a weightless space-to-depth row (yolov7 / YOLOR ReOrg) before a conv block: the keys stay, only the weight
        # changes; "P" is the conv row (P.conv.weight, P.bn.*)
        return StemKeys(key[: -len(".conv.weight")], "reorg", key, shape)
    return None


def _position(key: str) -> tuple:
    """Sort key of a parameter name by layer position: ``model.2`` before ``model.10``, numbers as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))


def find_stem(state_dict: dict[str, torch.Tensor], in_channels: int = 3, block_size: int = 2) -> StemKeys | None:
    """The stem of ``state_dict``, found by structure, whatever the order of the dict's keys.

    The stem is the conv that reads the image. A Focus layout (``P.conv.conv.weight`` with
    ``in_channels * block_size**2`` input channels) or a conv-stem layout (``P.conv.weight`` with ``in_channels``)
    says so by itself; a ReOrg layout (``P.conv.weight`` with ``in_channels * block_size**2``) is also what any inner
    conv of that width looks like, so it counts only when no weight has one of the other two. Among several, the
    earliest layer wins (``model.0`` before ``model.1`` before ``model.10``). None if no weight has a stem layout.
    """
    found = [
        stem
        for k, v in state_dict.items()
        if isinstance(k, str) and k.endswith(".weight") and v.ndim == 4
        for stem in [_layout(k, list(v.shape), in_channels, block_size)]
        if stem is not None
    ]
    return min(found, key=lambda stem: (stem.form == "reorg", _position(stem.weight_key)), default=None)


def stem_at(
    state_dict: dict[str, torch.Tensor], weight_key: str, kernel: tuple[int, int], block_size: int
) -> StemKeys | None:
    """The stem whose conv weight is ``weight_key``, after a weightless space-to-depth of ``block_size`` (the file
    said where: timm's ``arch``), in either form: ``reorg`` (O, C*bs*bs, k, k) with the architecture's ``kernel``, or
    ``conv`` (O, C, bs*k, bs*k). None when the key is absent or its shape is neither.
    """
    weight = state_dict.get(weight_key)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        return None
    shape, (kh, kw) = list(weight.shape), kernel
    prefix = weight_key[: -len(".weight")] if weight_key.endswith(".weight") else weight_key
    if shape[2:] == [kh, kw] and shape[1] % block_size**2 == 0:
        return StemKeys(prefix, "reorg", weight_key, shape, weightless=True)
    if shape[2:] == [block_size * kh, block_size * kw]:
        return StemKeys(prefix, "conv", weight_key, shape, weightless=True)
    return None


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    to: str = "conv",
    block_size: int = 2,
    order: str = "yolov5",
    in_channels: int = 3,
    stem: StemKeys | None = None,
) -> tuple[dict[str, torch.Tensor], StemKeys]:
    """Return a new state dict whose stem is in form ``to`` (``"conv"`` or ``"focus"``); the input is not modified.

    ``stem``: where the stem is, when the file said so (``stem_at``); else it is found by its key layout. A weightless
    stem (``reorg``, or a ``conv`` marked ``weightless``) keeps its keys both ways: only its weight is remapped.

    Raises:
        ValueError: No recognisable stem, or the stem is already in form ``to``.
    """
    if to not in ("conv", "focus"):
        raise ValueError(f"a state dict converts to 'conv' or 'focus', not {to!r}")
    stem = stem if stem is not None else find_stem(state_dict, in_channels, block_size)
    if stem is None:
        raise ValueError(
            "no Focus or conv stem found: no conv weight is '<prefix>.conv.conv.weight' with "
            f"{in_channels * block_size**2} input channels or '<prefix>.conv.weight' with {in_channels}"
        )
    if stem.form == to or (stem.form == "reorg" and to == "focus" and stem.weightless):
        raise ValueError(f"the stem at {stem.prefix!r} is already in {to} form")
    if stem.form == "reorg":
        if to != "conv":
            raise ValueError(f"the stem at {stem.prefix!r} (space-to-depth row + conv) converts to 'conv' only")
        result = dict(state_dict)
        result[stem.weight_key] = focus_to_conv_weight(state_dict[stem.weight_key], block_size, order)
        return result, stem
    if stem.weightless:  # back to the weightless space-to-depth + conv the file's family has: the same keys
        result = dict(state_dict)
        result[stem.weight_key] = conv_to_focus_weight(state_dict[stem.weight_key], block_size, order)
        return result, stem
    old_inner, new_inner = (
        (f"{stem.prefix}.conv.", f"{stem.prefix}.") if to == "conv" else (f"{stem.prefix}.", f"{stem.prefix}.conv.")
    )
    remap = focus_to_conv_weight if to == "conv" else conv_to_focus_weight
    result: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == stem.weight_key:
            new_key = new_inner + "conv.weight"
            result[new_key] = remap(value, block_size, order)
        elif key.startswith(old_inner + "bn.") or key == old_inner + "conv.bias":
            result[new_inner + key[len(old_inner) :]] = value
        else:
            result[key] = value
    return result, stem
