"""Converted timm models script with TorchScript and export to ONNX; onnxruntime agrees with torch within 1e-4."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import focus_surgery as fs

timm = pytest.importorskip("timm")  # optional third-party packages: skip without them
ort = pytest.importorskip("onnxruntime")
import focus_surgery.integrations.timm  # noqa: E402, F401  ours: an import error fails


def _mobilenet_all_s2d():
    model = timm.create_model("mobilenetv3_small_100", num_classes=5)
    fs.convert(model.eval(), to="s2d", scope="all", input_shape=(1, 3, 32, 32))  # SPDConv pads, pixel_unshuffle
    return model, 32


def _vit_patch_s2d():
    model = timm.create_model("vit_tiny_patch16_224", patch_size=8, img_size=32, depth=1, num_classes=5)
    fs.convert(model.eval(), to="s2d", order="timm", input_shape=(1, 3, 32, 32))
    return model, 32


def _resnet18_s2d_folded():
    model = timm.create_model("resnet18_s2d", num_classes=5)
    fs.convert(model.eval(), to="conv", input_shape=(1, 3, 32, 32))  # one 12x12 stride-4 conv
    return model, 32


def _convnext_focus_as_registered():
    return timm.create_model("convnext_atto_s2d_focus", num_classes=5), 32


def _tresnet_folded():
    from timm.models.tresnet import TResNet

    model = TResNet(layers=[1, 1, 1, 1], num_classes=5)
    fs.convert(model.eval(), to="conv", input_shape=(1, 3, 32, 32))
    return model, 32


def _std_conv_s2d():
    model = nn.Sequential(timm.layers.StdConv2d(3, 8, 7, stride=2, padding=3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    fs.convert(model.eval(), to="s2d", input_shape=(1, 3, 32, 32))
    return model, 32


BUILDERS = [
    _mobilenet_all_s2d,
    _vit_patch_s2d,
    _resnet18_s2d_folded,
    _convnext_focus_as_registered,
    _tresnet_folded,
    _std_conv_s2d,
]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda b: b.__name__.strip("_"))
def test_torchscript_and_onnx(build):
    torch.manual_seed(0)
    model, size = build()
    model.eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        assert torch.allclose(scripted(x), expected, rtol=1e-5, atol=1e-6)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["images"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"images": x.numpy()})
    scale = max(1.0, float(expected.abs().max()))
    assert float((torch.from_numpy(actual) - expected).abs().max()) <= 1e-4 * scale
