"""The demo behind ``./run demo``: build a Focus model, convert its stem to one strided conv, verify, report."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ConvBnAct, Focus
from .surgery import ConversionReport, convert


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.25)
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model


def build_focus_model(seed: int = 0) -> nn.Module:
    """A small YOLOv5-style backbone with a Focus stem (3 -> 16 channels, 3x3 conv after space-to-depth)."""
    torch.manual_seed(seed)
    model = nn.Sequential(Focus(3, 16, k=3), ConvBnAct(16, 32, 3, 2), ConvBnAct(32, 32, 1))
    return randomize_batchnorm(model, seed).eval()


def run_demo() -> tuple[ConversionReport, ConversionReport]:
    """Convert the demo model Focus -> conv and back, each verified in float64; print and return both reports."""
    model = build_focus_model()
    original_weight = model[0].conv.conv.weight.detach().clone()
    print(f"Model with a YOLOv5 Focus stem:\n  Focus: space-to-depth(2, yolov5) + Conv2d{tuple(original_weight.shape)}")
    to_conv = convert(model, to="conv", input_shape=(2, 3, 96, 128))
    print(to_conv)
    back = convert(model, to="focus", input_shape=(2, 3, 96, 128))
    print(back)
    identical = torch.equal(model[0].conv.conv.weight, original_weight)
    print(f"round trip Focus -> conv -> Focus weights bit-identical: {identical}")
    return to_conv, back
