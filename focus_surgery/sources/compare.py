"""Checks on tensors alone: the stem of a state dict run before and after in float64, and tensor-by-tensor equality."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers import SpaceToDepth
from ..state_dict import convert_state_dict, find_stem
from ..verify import DEFAULT_TOLERANCE, VerificationReport, verify

STEM_ASSUMES = "a state dict has no geometry: both stems are run with same padding (k // 2) and the given order ({})"


def stem_module(state_dict: dict[str, torch.Tensor], block_size: int, order: str) -> nn.Module:
    """The stem conv of a state dict as a module (Focus: space-to-depth + same-padded conv; else strided conv)."""
    stem = find_stem(state_dict, block_size=block_size)
    weight = state_dict[stem.weight_key]
    out_ch, in_ch, kh, kw = weight.shape
    if stem.form in ("focus", "reorg"):
        conv = nn.Conv2d(in_ch, out_ch, (kh, kw), 1, (kh // 2, kw // 2), bias=False)
        module: nn.Module = nn.Sequential(SpaceToDepth(block_size, order), conv)
    else:
        k_h, k_w = kh // block_size, kw // block_size
        padding = (block_size * (k_h // 2), block_size * (k_w // 2))
        conv = module = nn.Conv2d(in_ch, out_ch, (kh, kw), block_size, padding, bias=False)
    conv.weight.data.copy_(weight.float())
    return module


def verify_stems(before: dict, after: dict, block_size: int, order: str) -> VerificationReport:
    """Run the stems of two state dicts on the same random input in float64."""
    shape = (2, 3, 8 * block_size, 12 * block_size)
    return verify(stem_module(before, block_size, order), stem_module(after, block_size, order), input_shape=shape)


def compare_state_dicts(a: dict, b: dict, block_size: int = 2, order: str = "yolov5",
                        tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:  # fmt: skip
    """Compare two state dicts tensor by tensor (the stem of ``a`` remapped first when the forms differ).

    Returns:
        (dict): ``compared`` (what was done), ``tensors``, ``max_abs_err``, ``passed``, ``problem``. Zero tensors
        compared never pass.
    """
    stem_a, stem_b = find_stem(a, block_size=block_size), find_stem(b, block_size=block_size)
    how = "every tensor, as stored"
    if stem_a and stem_b and stem_a.form != stem_b.form:
        a = convert_state_dict(a, stem_b.form, block_size, order)[0]
        how = f"the stem remapped ({stem_a.form} -> {stem_b.form}, order {order}), then every tensor"
    result: dict[str, Any] = {"compared": f"state dicts: {how}", "tensors": 0, "max_abs_err": None, "passed": False}
    if a.keys() != b.keys():
        diff = sorted(set(a) ^ set(b))
        result["problem"] = f"keys differ ({len(diff)}, e.g. {diff[:3]}): not the same model"
        return result
    errors = []
    for key in a:
        if a[key].shape != b[key].shape:
            result["problem"] = f"{key} has shape {tuple(a[key].shape)} vs {tuple(b[key].shape)}: not the same model"
            return result
        if a[key].numel():
            errors.append(float((a[key].detach().double() - b[key].detach().double()).abs().max()))
    result["tensors"] = len(errors)
    if not errors:
        result["problem"] = "no tensors to compare: nothing was verified"
        return result
    result["max_abs_err"] = max(errors)
    result["passed"] = result["max_abs_err"] <= tolerance
    result["problem"] = "" if result["passed"] else "tensors differ"
    return result
