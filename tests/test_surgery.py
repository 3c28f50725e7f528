"""Module surgery: every recognised stem form, both directions, what is preserved, what is refused."""

import copy

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery.demo import build_focus_model, randomize_batchnorm
from focus_surgery.surgery import ConversionError, VerificationError


class YOLOv5Conv(nn.Module):
    """Shaped like the YOLOv5 repository's models.common.Conv (LeakyReLU as in v2.0)."""

    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    """Shaped like the YOLOv5 repository's models.common.Focus: recognised by structure, not imported."""

    def __init__(self, c1, c2, k=1):
        super().__init__()
        self.conv = YOLOv5Conv(c1 * 4, c2, k)

    def forward(self, x):
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1))


def outputs_equal(a, b, x):
    a64, b64 = copy.deepcopy(a).double().eval(), copy.deepcopy(b).double().eval()
    with torch.no_grad():
        return float((a64(x) - b64(x)).abs().max())


def test_focus_to_conv_and_back_is_exact_and_bit_identical():
    model = build_focus_model()
    original = copy.deepcopy(model)
    report = fs.convert(model, to="conv")
    assert [r.path for r in report.replaced] == ["0"]
    assert isinstance(model[0], fs.ConvBnAct) and model[0].conv.kernel_size == (6, 6)
    assert model[0].conv.stride == (2, 2) and model[0].conv.padding == (2, 2)
    assert report.verification.passed and report.max_abs_err <= 1e-10
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    assert outputs_equal(original, model, x) <= 1e-10
    fs.convert(model, to="focus")
    assert isinstance(model[0], fs.Focus)
    assert torch.equal(model[0].conv.conv.weight, original[0].conv.conv.weight)
    assert torch.equal(model[0].conv.bn.running_var, original[0].conv.bn.running_var)


def test_yolov5_repository_focus_is_recognised_by_structure():
    model = randomize_batchnorm(nn.Sequential(Focus(3, 8, 3), YOLOv5Conv(8, 16, 3, 2))).eval()
    original = copy.deepcopy(model)
    report = fs.convert(model, to="conv")
    assert report.replaced[0].old_type.endswith("Focus") and isinstance(model[0], YOLOv5Conv)
    assert isinstance(model[0].act, nn.LeakyReLU)
    assert outputs_equal(original, model, torch.rand(1, 3, 32, 64, dtype=torch.float64)) <= 1e-10


@pytest.mark.parametrize("order", fs.ORDERS)
@pytest.mark.parametrize("bs", [2, 3, 4])
def test_sequential_space_to_depth_plus_conv_folds(order, bs):
    model = nn.Sequential(fs.SpaceToDepth(bs, order), nn.Conv2d(3 * bs * bs, 8, 3, 1, 1), nn.ReLU())
    original = copy.deepcopy(model)
    report = fs.convert(model, to="conv", input_shape=(2, 3, 4 * bs, 6 * bs))
    assert isinstance(model[0], nn.Identity) and model[1].stride == (bs, bs)
    assert list(model.state_dict()) == ["1.weight", "1.bias"]
    assert report.replaced[0].path == "1" and report.max_abs_err <= 1e-10
    assert outputs_equal(original, model, torch.rand(2, 3, 4 * bs, 6 * bs, dtype=torch.float64)) <= 1e-10


def test_pixel_unshuffle_is_recognised():
    model = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, 8, 1))
    report = fs.convert(model, to="conv", input_shape=(1, 3, 8, 8))
    assert report.replaced[0].order == "pixel_unshuffle" and model[1].kernel_size == (2, 2)


@pytest.mark.parametrize("to", ["s2d", "focus"])
def test_all_strided_convs_to_space_to_depth_and_back(to):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 3),
        nn.ReLU(),
        fs.ConvBnAct(8, 16, 3, 2),
        nn.Conv2d(16, 16, 3, 1, 1),
        nn.Conv2d(16, 16, 1, 2),
        fs.ConvBnAct(16, 32, 6, 2, 2),
    )
    randomize_batchnorm(model).eval()
    original = copy.deepcopy(model)
    report = fs.convert(model, to=to, scope="all")
    assert [r.path for r in report.replaced] == ["0", "2", "4", "5"]
    assert type(model[3]) is nn.Conv2d  # stride 1: untouched
    assert isinstance(model[5], fs.Focus if to == "focus" else fs.SPDConv)  # 6x6/2 pad 2: symmetric padding
    assert model[5].conv.conv.kernel_size == (3, 3) and getattr(model[5], "pad", None) is None
    x = torch.rand(2, 3, 64, 96, dtype=torch.float64)
    assert outputs_equal(original, model, x) <= 1e-10
    back = fs.convert(model, to="conv", scope="all")
    assert len(back.replaced) == 4
    assert not any(isinstance(m, (fs.Focus, fs.SPDConv, fs.SpaceToDepth)) for m in model.modules())
    for a, b in zip(original.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)  # bit-identical after the round trip


def test_stem_scope_touches_only_the_first_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1))
    report = fs.convert(model, to="s2d")
    assert [r.path for r in report.replaced] == ["0"] and type(model[1]) is nn.Conv2d


def test_preserves_dtype_device_mode_and_requires_grad():
    model = build_focus_model().half().train()
    model[0].conv.conv.weight.requires_grad_(False)
    fs.convert(model, to="conv", verify=True)
    conv = model[0].conv
    assert conv.weight.dtype == torch.float16 and conv.weight.device.type == "cpu"
    assert model[0].training and conv.training and model[0].bn.training
    assert conv.weight.requires_grad is False and model[0].bn.weight.requires_grad is True


@pytest.mark.parametrize(
    "conv,reason",
    [
        (nn.Conv2d(3, 8, 3, 2, 1, dilation=2), "dilation"),
        (nn.Conv2d(4, 8, 3, 2, 1, groups=2), "groups=2"),
        (nn.Conv2d(3, 8, 3, 2, 1, padding_mode="reflect"), "padding_mode"),
        (nn.Conv2d(3, 8, 3, (2, 1), 1), "differs per axis"),
    ],
)
def test_unsupported_convs_are_reported_and_left_unchanged(conv, reason):
    model = nn.Sequential(conv)
    before = copy.deepcopy(model.state_dict())
    report = fs.convert(model, to="s2d", order="yolov5")
    assert not report.replaced and reason in report.skipped[0].reason and report.skipped[0].path == "0"
    assert model[0] is conv and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConversionError, match=reason):
        fs.convert(model, to="s2d", order="yolov5", strict=True)


def test_grouped_conv_is_exact_with_pixel_unshuffle_order():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1, groups=4))
    original = copy.deepcopy(model)
    report = fs.convert(model, to="s2d", order="pixel_unshuffle", input_shape=(1, 4, 16, 16))
    assert report.replaced and model[0].conv.groups == 4
    assert outputs_equal(original, model, torch.rand(1, 4, 16, 16, dtype=torch.float64)) <= 1e-10


def test_failed_verification_raises_and_changes_nothing():
    model = build_focus_model()
    stem = model[0]
    with pytest.raises(VerificationError, match="model left unchanged"):
        fs.convert(model, to="conv", tolerance=-1.0)  # nothing can pass a negative tolerance
    assert model[0] is stem


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown target"):
        fs.convert(nn.Sequential(), to="depth")
    with pytest.raises(ValueError, match="unknown scope"):
        fs.convert(nn.Sequential(), scope="everything")
    with pytest.raises(ValueError, match="unknown space-to-depth order"):
        fs.convert(nn.Sequential(), to="s2d", order="nchw")


def test_timm_tresnet_stem_folds_into_one_12x12_conv():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tresnet_m", num_classes=10).eval()
    randomize_batchnorm(model)
    report = fs.convert(model, to="conv", input_shape=(1, 3, 64, 64))
    assert report.replaced[0].path == "body.conv1" and isinstance(model.body.s2d, nn.Identity)
    assert model.body.conv1.conv.kernel_size == (12, 12) and model.body.conv1.conv.stride == (4, 4)
    assert report.verification.passed and report.verification.max_rel_err <= 1e-10


def test_focus_with_per_axis_inner_stride_is_refused_not_converted_wrongly():
    model = nn.Sequential(fs.Focus(3, 8, 3, s=(1, 2)))
    report = fs.convert(model, to="conv", verify=False)
    assert not report.replaced and "differs per axis" in report.skipped[0].reason
    assert isinstance(model[0], fs.Focus)


def test_verification_input_suits_both_models():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 3, 1))  # stride 3: its s2d form needs sizes divisible by 3
    report = fs.convert(model, to="s2d")
    assert report.verification.passed and all(s % 3 == 0 for s in report.verification.input_shapes[0][2:])


def test_a_model_that_is_itself_the_stem_is_reported():
    report = fs.convert(fs.Focus(3, 8, 3), to="conv")
    assert not report.replaced and "wrap it" in report.skipped[0].reason


@pytest.mark.parametrize("order", fs.ORDERS)
def test_space_to_depth_then_strided_conv_with_other_padding_per_axis_folds(order):
    """Inner stride 2 and padding (1, 2): the folded conv keeps height and width padding apart (6x10/4, pad (2, 4))."""
    model = nn.Sequential(
        fs.SpaceToDepth(2, order), nn.Conv2d(12, 8, (3, 5), stride=2, padding=(1, 2)), nn.BatchNorm2d(8)
    )
    reference = copy.deepcopy(randomize_batchnorm(model, seed=4).eval())
    report = fs.convert(model, to="conv", input_shape=(2, 3, 32, 48))
    conv = model[1]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((6, 10), (4, 4), (2, 4)) and report.verification.passed
    final = fs.verify(reference, model, input_shape=(1, 3, 64, 40))
    assert final.passed and final.max_rel_err <= 1e-10, final
