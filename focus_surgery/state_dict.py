"""Convert the Focus stem of a plain state dict (no model object), like timm's ``checkpoint_filter_fn``.

Without strides or paddings, the stem is recognised by its key layout (``find_stem``, whatever the key order):
``P.conv.conv.weight`` (O, C*bs*bs, k, k) is a Focus; ``P.conv.weight`` (O, C, bs*k, bs*k) its conv form; and
``P.conv.weight`` (O, C*bs*bs, k, k) a weightless space-to-depth row before a conv block ("reorg", yolov7's
``ReOrg``: converts to conv with the same keys). Where the file says where (timm's ``arch``), ``stem_at`` reads it.
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
    """The stem form of conv weight ``key`` if its layout is a stem's (it reads the image), else None."""
    if key.endswith(".conv.conv.weight") and shape[1] == in_channels * block_size**2:
        return StemKeys(key[: -len(".conv.conv.weight")], "focus", key, shape)
    if key.endswith(".conv.weight") and shape[1] == in_channels and shape[2] % block_size == 0 == shape[3] % block_size:
        return StemKeys(key[: -len(".conv.weight")], "conv", key, shape)
    if key.endswith(".conv.weight") and shape[1] == in_channels * block_size**2:
        # a weightless space-to-depth row before a conv block (P.conv.weight, P.bn.*): only the weight changes
        return StemKeys(key[: -len(".conv.weight")], "reorg", key, shape)
    return None


def _position(key: str) -> tuple:
    """Sort key of a parameter name by layer position: ``model.2`` before ``model.10``, numbers as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))


def find_stem(state_dict: dict[str, torch.Tensor], in_channels: int = 3, block_size: int = 2) -> StemKeys | None:
    """The stem of ``state_dict`` (the conv that reads the image), found by structure; None if none.

    A reorg layout is also what any inner conv of that width looks like, so it counts only when no weight has a Focus
    or conv layout. Among several, the earliest layer wins (``model.0`` before ``model.1`` before ``model.10``).
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
    """The stem whose conv weight is ``weight_key`` after a weightless space-to-depth (timm's ``arch`` says where), in
    either form: ``reorg`` (O, C*bs*bs, k, k) with the architecture's ``kernel``, or ``conv`` (O, C, bs*k, bs*k).
    None when the key is absent or its shape is neither."""
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
    """A new state dict whose stem (``stem``, else ``find_stem``) is in form ``to`` (``"conv"`` or ``"focus"``). A
    weightless stem (``reorg``, or a ``conv`` marked ``weightless``) keeps its keys both ways: only its weight changes.

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
    if stem.form == "reorg" and to != "conv":
        raise ValueError(f"the stem at {stem.prefix!r} (space-to-depth row + conv) converts to 'conv' only")
    remap = focus_to_conv_weight if to == "conv" else conv_to_focus_weight
    if stem.form == "reorg" or stem.weightless:  # a weightless space-to-depth before the conv: the same keys
        return {**state_dict, stem.weight_key: remap(state_dict[stem.weight_key], block_size, order)}, stem
    old_inner, new_inner = f"{stem.prefix}.conv.", f"{stem.prefix}."
    if to == "focus":
        old_inner, new_inner = new_inner, old_inner
    result: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key == stem.weight_key:
            result[new_inner + "conv.weight"] = remap(value, block_size, order)
        elif key.startswith(old_inner + "bn.") or key == old_inner + "conv.bias":
            result[new_inner + key[len(old_inner) :]] = value
        else:
            result[key] = value
    return result, stem
