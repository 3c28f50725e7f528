"""stems.recognize: space-to-depth found by what a module computes; the probe guarding every Focus found by name."""

import copy
import pickle
import pickletools

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery import stems
from focus_surgery.orders import ORDERS, channel_index
from tests.family_models.reorg import Focus as NamedFocus, ReOrg, ShuffledReOrg


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block_size", [2, 3, 4])
@pytest.mark.parametrize("channels", [1, 3, 5])
def test_every_order_and_block_size_is_read_back(order, block_size, channels):
    info = stems.recognize(fs.SpaceToDepth(block_size, order), channels)
    assert (info.block_size, info.channels) == (block_size, channels)
    same = [channel_index(c, dy, dx, channels, block_size, order) for c, dy, dx in info.channel_map]
    assert same == list(range(channels * block_size**2))  # with C = 1, timm and pixel_unshuffle coincide
    # with C = 1 only timm and pixel_unshuffle coincide (dy*bs + dx both); yolov5 (dx*bs + dy) never does
    alike = {"timm", "pixel_unshuffle"} if channels == 1 and order in ("timm", "pixel_unshuffle") else {order}
    assert info.order in alike
    assert len(info.channel_map) == channels * block_size**2


def test_torch_pixel_unshuffle_and_family_reorg():
    assert stems.recognize(nn.PixelUnshuffle(3), 2).order == "pixel_unshuffle"
    info = stems.recognize(ReOrg(), 3)
    assert (info.block_size, info.order) == (2, "yolov5")
    assert info.channel_map[:4] == ((0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0))  # ch = (dx*2 + dy)*C + c


def test_an_unnamed_order_is_a_general_permutation():
    info = stems.recognize(ShuffledReOrg(), 3)
    assert info.block_size == 2 and info.order is None
    assert sorted(info.channel_map) == sorted((c, dy, dx) for c in range(3) for dy in range(2) for dx in range(2))
    assert "channel order of its own" in info.describe()


@pytest.mark.parametrize(
    "module",
    [nn.Identity(), nn.MaxPool2d(2), nn.Upsample(scale_factor=2), nn.SiLU(), fs.DepthToSpace(2), nn.Flatten()],
)
def test_what_is_not_a_space_to_depth_is_none(module):
    assert stems.recognize(module, 4) is None


def test_duplicated_phases_are_not_a_space_to_depth():
    class Twice(nn.Module):
        def forward(self, x):
            return torch.cat([x[..., ::2, ::2]] * 4, 1)

    with pytest.raises(stems.NotSpaceToDepth, match="read twice"):
        stems.probe(Twice(), 3)


def _model(stem: nn.Module, c2: int = 8) -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(*stem) if isinstance(stem, list) else nn.Sequential(stem)
    model.append(nn.Conv2d(c2, 4, 3, 2, 1))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.normal_(0, 0.25)
            m.running_mean.normal_(0, 0.2), m.running_var.uniform_(0.5, 2)
    return model.eval()


def test_weightless_reorg_before_a_conv_is_converted_exactly():
    model = _model([ReOrg(), nn.Conv2d(12, 8, 3, 1, 1, bias=False)])
    conv_weight = model[1].weight.detach().clone()
    report = fs.convert(model, to="conv")
    assert len(report.replaced) == 1 and report.verification.passed and report.verification.max_rel_err < 1e-12
    assert isinstance(model[0], nn.Identity) and model[1].stride == (2, 2) and model[1].padding == (2, 2)
    assert torch.equal(model[1].weight, fs.focus_to_conv_weight(conv_weight, 2, "yolov5"))


def test_reorg_in_an_unnamed_order_is_refused_with_a_message():
    model = _model([ShuffledReOrg(), nn.Conv2d(12, 8, 3, 1, 1)])
    report = fs.convert(model, to="conv", verify=False)
    assert not report.replaced and "channel order of its own" in report.skipped[0].reason
    assert isinstance(model[0], ShuffledReOrg)
    with pytest.raises(fs.ConversionError, match="refused"):
        fs.convert(model, to="conv", strict=True)


def test_focus_found_by_name_slicing_in_timm_order_converts_with_timm_order():
    model = _model(NamedFocus(3, 8, 3, slicing="timm"))
    weight = model[0].conv.conv.weight.detach().clone()
    reference = copy.deepcopy(model)
    report = fs.convert(model, to="conv", verify=False)  # the probe, not verification, picks the order
    assert report.replaced[0].order == "timm"
    assert torch.equal(model[0].conv.weight, fs.focus_to_conv_weight(weight, 2, "timm"))
    assert fs.verify(reference, model).max_rel_err < 1e-12


def test_focus_found_by_name_in_an_unnamed_order_is_never_converted():
    model = _model(NamedFocus(3, 8, 3, slicing="shuffled"))
    report = fs.convert(model, to="conv", verify=False)
    assert not report.replaced and "refused" in report.skipped[0].reason
    assert isinstance(model[0], NamedFocus)


def test_yolox_style_focus_converts_exactly():
    model = _model(NamedFocus(3, 8, 3))
    report = fs.convert(model, to="conv")
    assert report.replaced[0].order == "yolov5" and report.verification.max_rel_err < 1e-12


# ------------------------------------------------------------------------------------- verify never passes on nothing


class _Zero(nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.outputs = outputs

    def forward(self, x):
        y = self.conv(x) * 0
        return {"zero": y} if self.outputs else []


def test_all_zero_outputs_do_not_pass():
    report = fs.verify(_Zero(True), _Zero(True), input_shape=(1, 3, 8, 8))
    assert not report.passed and report.output_scale == 0.0 and "output scale 0" in report.problem


def test_no_outputs_do_not_pass():
    report = fs.verify(_Zero(False), _Zero(False), input_shape=(1, 3, 8, 8))
    assert not report.passed and "nothing to compare" in report.problem


# ------------------------------------------------------------------------------------------- YAML rows without hooks


def test_yaml_rows_pickle_no_focus_surgery_function():
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    yaml = {
        "nc": 2,
        "backbone": [[-1, 1, "SPDConv", [16, 3]], [-1, 1, "SpaceToDepth", [2, "timm"]], [-1, 1, "Conv", [32, 3, 1]]],
        "head": [[[-1], 1, "Detect", ["nc"]]],
    }
    model = DetectionModel(yaml, ch=3, nc=2, verbose=False)
    assert not any(m._forward_pre_hooks for m in model.modules())
    names = [arg for op, arg, _ in pickletools.genops(pickle.dumps(model)) if isinstance(arg, str)]
    assert "_check_block_divides" not in names
    with pytest.raises(ValueError, match=r"^YAML row 1 .*feature map 5x5 is not divisible by block_size 2"):
        model.model[1](torch.rand(1, 64, 5, 5))


def test_sync_yaml_rewrites_a_reorg_row_and_its_conv_row():
    """yolov7 / YOLOR models (their code, here test-only copies).

    ReOrg row -> nn.Identity, conv row -> Conv [c2, 6, 2, 2]."""
    from tests.family_models.reorg import BaseConv

    class Conv(BaseConv):  # yolov7's models.common.Conv: conv + bn + act
        pass

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(ReOrg(), Conv(12, 8, 3, 1), Conv(8, 16, 3, 2))
            for i, m in enumerate(self.model):
                m.i, m.f = i, -1
            self.yaml = {
                "backbone": [[-1, 1, "ReOrg", []], [-1, 1, "Conv", [64, 3, 1]], [-1, 1, "Conv", [128, 3, 2]]],
                "head": [],
            }

        def forward(self, x):
            return self.model(x)

    model = Model().eval()
    report = fs.convert(model, to="conv")
    assert report.verification.passed and [r.path for r in report.replaced] == ["model.1"]
    assert model.yaml["backbone"] == [
        [-1, 1, "nn.Identity", []],
        [-1, 1, "Conv", [64, 6, 2, 2]],
        [-1, 1, "Conv", [128, 3, 2]],
    ]
