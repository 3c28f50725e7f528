"""An end-to-end check that sees the stem: float64, the stem's own feature map and every raw output, each judged
relative to its own scale.

Comparing only ``model(x)[0]`` of an untrained detector in float32 does not see the stem: its box coordinates are in
pixels (scale 240-480) and a scrambled stem moves them by less than 5e-5, inside ``rtol=atol=1e-4``. Here every
tensor gets its own scale, and the first one is the stem's output, where a wrong channel order, a shifted pad or
fresh BatchNorm statistics change values by O(1).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from focus_surgery.verify import flatten_outputs

TOLERANCE = 1e-10  # max abs error / the tensor's own max abs value; float64 round-off of an exact conversion ~1e-15


def stem_of(model: nn.Module) -> nn.Module:
    """The first layer: ``model.model[0]`` of an Ultralytics model, else the first child."""
    layers = getattr(model, "model", None)
    return layers[0] if isinstance(layers, nn.Sequential) else next(model.children())


@torch.no_grad()
def outputs_float64(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """[stem feature map, *raw outputs] of a float64 copy of ``model`` in eval mode (the model is not changed)."""
    model = copy.deepcopy(model).double().eval()
    seen: list[torch.Tensor] = []
    handle = stem_of(model).register_forward_hook(lambda m, i, out: seen.append(out))
    try:
        outputs = flatten_outputs(model(x.double()))
    finally:
        handle.remove()
    return [seen[0], *outputs]


def relative_errors(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> list[float]:
    """Per tensor: max |a - b| / max |a| (shapes must match)."""
    assert len(reference) == len(candidate), (len(reference), len(candidate))
    errors = []
    for a, b in zip(reference, candidate):
        assert a.shape == b.shape, (a.shape, b.shape)
        errors.append(float((a - b).abs().max() / a.abs().max().clamp_min(1e-300)))
    return errors


def stem_error(reference: nn.Module, candidate: nn.Module, x: torch.Tensor) -> float:
    """Largest per-tensor relative error between the two models (stem map and raw outputs), in float64."""
    return max(relative_errors(outputs_float64(reference, x), outputs_float64(candidate, x)))


def assert_same_stem(
    reference: nn.Module, candidate: nn.Module, x: torch.Tensor, tolerance: float = TOLERANCE
) -> float:
    error = stem_error(reference, candidate, x)
    assert error <= tolerance, f"stem map / raw outputs differ: max relative error {error:.3e} > {tolerance:.0e}"
    return error


# ------------------------------------------------------------------------------- the bugs the check must see


def plant_wrong_order(model: nn.Module) -> nn.Module:
    """The converted 6x6/2 stem's weight remapped with the timm order instead of the yolov5 one."""
    from focus_surgery.remap import conv_to_focus_weight, focus_to_conv_weight

    conv = stem_of(model).conv
    with torch.no_grad():
        conv.weight.copy_(focus_to_conv_weight(conv_to_focus_weight(conv.weight, 2, "yolov5"), 2, "timm"))
    return model


def plant_shifted_pad(model: nn.Module) -> nn.Module:
    """The padding of a 6x6/2 stem with padding 2 shifted by one pixel (1 left/top, 3 right/bottom): same shape."""
    stem = stem_of(model)
    conv = stem.conv
    conv.padding = (0, 0)
    stem.conv = nn.Sequential(nn.ZeroPad2d((1, 3, 1, 3)), conv)
    return model


def plant_fresh_batchnorm(model: nn.Module) -> nn.Module:
    """The stem's BatchNorm statistics reset (running mean 0, variance 1), as a conversion that rebuilt it would."""
    stem_of(model).bn.reset_running_stats()
    return model


PLANTED = {
    "wrong channel order": plant_wrong_order,
    "shifted pad": plant_shifted_pad,
    "fresh BatchNorm statistics": plant_fresh_batchnorm,
}
