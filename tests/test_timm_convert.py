"""Exact stem conversion on real timm architectures (random weights), both directions, measured in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import focus_surgery as fs
from focus_surgery.orders import ORDERS

timm = pytest.importorskip("timm")  # optional third-party package: skip without it
from focus_surgery.integrations import timm_check, timm_convs  # noqa: E402  ours: an import error fails

TOLERANCE = 1e-10  # max abs error relative to the output scale, float64
# (architecture, stem path, expected form after the first conversion); the big ones are marked slow.
ARCHITECTURES = [
    ("resnet18", "conv1", "SPDConv(block_size=2, order=yolov5, k=4x4, pad=(2, 1, 2, 1))"),
    pytest.param("resnet50", "conv1", "SPDConv(block_size=2", marks=pytest.mark.slow),
    pytest.param("resnetv2_50", "stem.conv", "SPDConv(block_size=2", marks=pytest.mark.slow),
    pytest.param("resnetv2_50x1_bit", "stem.conv", "SpaceToDepthStdConv(block_size=2", marks=pytest.mark.slow),
    ("regnety_002", "stem", "SPDConv(block_size=2, order=yolov5, k=2x2, pad=(1, 0, 1, 0))"),
    ("efficientnet_b0", "conv_stem", "SPDConv(block_size=2"),
    ("tf_efficientnet_b0", "conv_stem", "SpaceToDepthConv2dSame(block_size=2, order=yolov5, k=2x2, pad=SAME)"),
    ("mobilenetv3_small_100", "conv_stem", "SPDConv(block_size=2"),
    pytest.param("convnext_tiny", "stem.0", "SPDConv(block_size=4, order=yolov5, k=1x1", marks=pytest.mark.slow),
    ("vit_tiny_patch16_224", "patch_embed.proj", "SPDConv(block_size=16, order=yolov5, k=1x1"),
    pytest.param("tresnet_m", "body.conv1", "Conv(12x12, stride=4, padding=(4, 4))", marks=pytest.mark.slow),
    ("resnet18_s2d", "conv1.1", "Conv(12x12, stride=4, padding=(4, 4))"),
]


@pytest.mark.parametrize("name, path, form", ARCHITECTURES)
def test_stem_round_trip_is_exact(name, path, form):
    result = timm_check.stem_round_trip(name)
    assert result.path == path
    assert result.stem_after.startswith(form)
    assert result.max_rel_err <= TOLERANCE
    # Back to the original: same module types, parameter names and values, same outputs at another input size
    # (odd where the original takes odd sizes), and pretrained_cfg["first_conv"] names a weight after each step.
    assert result.restored and result.first_conv_ok
    assert result.odd_size_err is None if name.startswith("vit") else result.odd_size_err <= TOLERANCE


def test_markdown_table_lists_each_row():
    row = timm_check.StemRoundTrip(
        "resnet18",
        "conv1",
        "Conv2d(7x7)",
        "SPDConv(block_size=2)",
        4.2e-16,
        True,
        "the converted model accepts only images with height and width divisible by 2 (the original accepted any "
        "height and width)",
        0.0,
        True,
        (1, 3),
    )
    lines = timm_check.markdown_table([row, row]).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| architecture | stem module | stem before | stem after |")
    assert lines[2] == (
        "| `resnet18` | `conv1` | `Conv2d(7x7)` | `SPDConv(block_size=2)` | 4.2e-16 | yes | 0.0e+00 "
        "| height and width divisible by 2 |"
    )


def _vit(patch: int, **kwargs) -> nn.Module:
    torch.manual_seed(patch)
    return timm.create_model(
        "vit_tiny_patch16_224", patch_size=patch, img_size=4 * patch, depth=1, num_classes=5, **kwargs
    ).eval()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("block_size", [2, 3, 4, 8, 16])
def test_patch_embedding_every_block_size_and_order(block_size, order):
    """A ViT patch embedding (k x k stride k) is space-to-depth(k) + 1x1 conv; the flatten after it still works."""
    model = _vit(block_size)
    original = copy.deepcopy(model)
    shape = (2, 3, 4 * block_size, 4 * block_size)
    report = fs.convert(model, to="s2d", order=order, input_shape=shape)
    assert report.verification.max_rel_err <= TOLERANCE
    spd = model.patch_embed.proj
    assert (spd.s2d.block_size, spd.s2d.order) == (block_size, order)
    assert spd.conv.kernel_size == (1, 1) and spd.conv.in_channels == 3 * block_size**2
    back = fs.convert(model, to="conv", input_shape=shape)
    assert back.verification.max_rel_err <= TOLERANCE
    assert type(model.patch_embed.proj) is nn.Conv2d
    assert torch.equal(model.patch_embed.proj.weight, original.patch_embed.proj.weight)
    assert model.patch_embed.proj.stride == (block_size, block_size)


@pytest.mark.parametrize(
    "block_size, order", [(2, "yolov5"), (3, "timm"), (4, "pixel_unshuffle"), (8, "yolov5"), (16, "timm")]
)
def test_space_to_depth_stem_folds_every_block_size(block_size, order):
    """SpaceToDepth(bs) + 3x3 conv as a timm ResNet stem folds to one (3*bs)x(3*bs) stride-bs conv and back.

    (Every block size x order pair runs on the ViT patch embedding above; a one-block ResNet keeps this fast.)
    """
    from timm.models.resnet import BasicBlock, ResNet

    torch.manual_seed(0)
    model = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), num_classes=5).eval()
    stem_conv = nn.Conv2d(3 * block_size**2, 64, 3, 1, 1, bias=False)
    model.conv1 = nn.Sequential(fs.SpaceToDepth(block_size, order), stem_conv)
    shape = (1, 3, 8 * block_size, 6 * block_size)
    report = fs.convert(model, to="conv", input_shape=shape)
    assert report.verification.max_rel_err <= TOLERANCE
    folded = model.conv1[1]
    assert folded.kernel_size == (3 * block_size, 3 * block_size) and folded.stride == (block_size, block_size)
    back = fs.convert(model, to="s2d", order=order, input_shape=shape)
    assert back.verification.max_rel_err <= TOLERANCE


@pytest.mark.parametrize("order", ORDERS)
def test_scope_all_rewrites_every_strided_conv(order):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5).eval()
    strided = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    report = fs.convert(model, to="s2d", scope="all", order=order, input_shape=(1, 3, 64, 64))
    assert sorted(r.path for r in report.replaced) == sorted(strided) and len(strided) == 7
    assert report.verification.max_rel_err <= TOLERANCE
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    back = fs.convert(model, to="conv", scope="all", input_shape=(1, 3, 64, 64))
    assert len(back.replaced) == 7 and back.verification.max_rel_err <= TOLERANCE


def test_grouped_strided_convs_use_pixel_unshuffle_or_are_reported():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=5).eval()
    report = fs.convert(model, to="s2d", scope="all", input_shape=(1, 3, 32, 32))
    depthwise = [r for r in report.replaced if r.path.endswith("conv_dw")]
    assert depthwise and all(r.order == "pixel_unshuffle" for r in depthwise)
    assert report.verification.max_rel_err <= TOLERANCE
    model = timm.create_model("mobilenetv3_small_100", num_classes=5).eval()
    before = model.blocks[0][0].conv_dw
    report = fs.convert(model, to="s2d", scope="all", order="yolov5", input_shape=(1, 3, 32, 32))
    reasons = {s.path: s.reason for s in report.skipped}
    assert "groups=16" in reasons["blocks.0.0.conv_dw"] and "pixel_unshuffle" in reasons["blocks.0.0.conv_dw"]
    assert model.blocks[0][0].conv_dw is before


def test_dilated_stem_is_reported_by_path_and_left_unchanged():
    model = timm.create_model("resnet18", num_classes=5).eval()
    model.conv1.dilation, model.conv1.padding = (2, 2), (6, 6)
    stem = model.conv1
    report = fs.convert(model, to="s2d", input_shape=(1, 3, 32, 32))
    assert not report.replaced and report.skipped[0].path == "conv1" and "dilation" in report.skipped[0].reason
    assert model.conv1 is stem
    with pytest.raises(fs.ConversionError, match="conv1: dilation"):
        fs.convert(model, to="s2d", strict=True, input_shape=(1, 3, 32, 32))


def test_indivisible_input_size_is_reported_by_path_and_left_unchanged():
    model = timm.create_model("resnet18", num_classes=5).eval()
    stem = model.conv1
    with pytest.raises(fs.ConversionError, match=r"conv1: .*31x31.*divisible by block_size 2.*left unchanged"):
        fs.convert(model, to="s2d", input_shape=(1, 3, 31, 31))
    assert model.conv1 is stem


def test_unknown_conv_subclass_is_reported_not_skipped_over():
    """A Conv2d subclass with its own forward is not a plain conv: the stem search stops there and says why."""

    class Scaled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)

    model = timm.create_model("resnet18", num_classes=5).eval()
    model.conv1 = Scaled(3, 64, 7, 2, 3, bias=False)
    report = fs.convert(model, to="s2d", input_shape=(1, 3, 32, 32))
    assert not report.replaced and report.skipped[0].path == "conv1"
    assert "register_conv_type" in report.skipped[0].reason


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kernel, stride", [(3, 2), (5, 2), (4, 4), (7, 4), (2, 4), (1, 2), (3, 3)])
def test_conv2d_same_every_kernel_and_input_size(kernel, stride, order):
    """timm's TF-SAME conv (dynamic padding) in space-to-depth form is exact at every input size, odd ones included,
    and folds back to the very Conv2dSame: same type, parameter names and values."""
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 8, kernel, stride, bias=True), nn.ReLU())
    reference = copy.deepcopy(model)
    report = fs.convert(model, to="s2d", order=order, input_shape=(1, 3, 4 * stride, 6 * stride))
    assert len(report.replaced) == 1 and report.verification.max_rel_err <= TOLERANCE
    assert isinstance(model[0], timm_convs.SpaceToDepthConv2dSame) and not report.narrowed_inputs
    assert model[0].conv.kernel_size == (-(-kernel // stride),) * 2  # 3x3/2 -> 2x2: no all-zero row of taps
    for height in range(4 * stride, 5 * stride + 1):  # every remainder modulo the stride
        assert fs.verify(reference, model, input_shape=(2, 3, height, height + 1)).max_rel_err <= TOLERANCE
    fs.convert(model, to="conv", input_shape=(1, 3, 4 * stride, 6 * stride))
    assert type(model[0]) is Conv2dSame and list(model.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_conv2d_same_with_trained_zero_taps_does_not_fold():
    """Taps the s2d form added are zero; once trained they are not, and no Conv2dSame computes the result."""
    from timm.layers import Conv2dSame

    model = nn.Sequential(Conv2dSame(3, 8, 3, 2))
    fs.convert(model, to="s2d", input_shape=(1, 3, 8, 8))
    with torch.no_grad():
        model[0].conv.weight.add_(0.1)
    before = model[0]
    with pytest.raises(fs.ConversionError, match="zero taps .* no longer zero"):
        fs.convert(model, to="conv", strict=True, input_shape=(1, 3, 8, 8))
    assert model[0] is before


def test_tf_efficientnet_round_trip_keeps_odd_sizes_and_loads_the_original_checkpoint():
    """The issue's case: 225 px features (1, 1280, 8, 8) before and after a round trip; the original state dict
    loads strictly into the round-tripped model."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_b0", num_classes=5).eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.rand(1, 3, 225, 225)
    with torch.no_grad():
        expected = model.forward_features(x)
    fs.convert(model, to="s2d", input_shape=(1, 3, 64, 64))
    assert model.pretrained_cfg["first_conv"] == "conv_stem.conv"
    fs.convert(model, to="conv", input_shape=(1, 3, 64, 64))
    assert model.pretrained_cfg["first_conv"] == "conv_stem"
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        features = model.forward_features(x)
    assert features.shape == expected.shape == (1, 1280, 8, 8)
    assert torch.allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_inception_stem_reports_the_sizes_it_narrows_to():
    """A valid-padding 3x3/2 stem (inception_v3, xception41) in s2d form needs even sizes: the report says so, and
    the default verification uses the configured 299 px rounded up to 300."""
    from timm.layers import ConvNormAct

    model = nn.Sequential(ConvNormAct(3, 8, 3, stride=2, padding=0), nn.ReLU())  # inception_v3's Conv2d_1a_3x3
    model.pretrained_cfg = {"input_size": (3, 299, 299), "first_conv": "0.conv"}
    report = fs.convert(model, to="s2d")
    assert report.verification.input_shapes == [[2, 3, 300, 300]] and report.verification.passed
    assert report.narrowed_inputs == [
        "0: the converted model accepts only images with height and width divisible by 2 "
        "(the original accepted any height and width)"
    ]
    assert "note: 0: the converted model accepts only images" in str(report)
    with pytest.raises(ValueError, match="299x299"):
        model(torch.rand(1, 3, 299, 299))
    back = fs.convert(model, to="conv")
    assert not back.narrowed_inputs and model(torch.rand(1, 3, 299, 299)).shape == (1, 8, 149, 149)


@pytest.mark.parametrize("conv_type", ["StdConv2d", "ScaledStdConv2d", "StdConv2dSame", "ScaledStdConv2dSame"])
@pytest.mark.parametrize("order", ORDERS)
def test_weight_standardised_conv_keeps_its_statistics(conv_type, order):
    """StdConv2d as space-to-depth: the standardisation sees only the original taps, so it is exact. The ...Same
    variants (dm_nfnet's stem) pad dynamically, and stay exact at odd sizes."""
    import timm.layers

    torch.manual_seed(0)
    same = conv_type.endswith("Same")
    conv = getattr(timm.layers, conv_type)(3, 16, 7, stride=2, padding="SAME" if same else 3)
    assert getattr(conv, "same_pad", False) == same
    model = nn.Sequential(conv, nn.ReLU())
    reference = copy.deepcopy(model)
    report = fs.convert(model, to="s2d", order=order, input_shape=(2, 3, 16, 24))
    assert isinstance(model[0], timm_convs.SpaceToDepthStdConv) and model[0].order == order
    assert report.verification.max_rel_err <= TOLERANCE
    assert bool(report.narrowed_inputs) != same  # static padding: even sizes only, and the report says so
    if same:
        for size in (15, 16, 17, 18):
            assert fs.verify(reference, model, input_shape=(1, 3, size, size + 3)).max_rel_err <= TOLERANCE
    # Naively zero-padding the kernel of a StdConv2d changes its mean and variance: not exact.
    naive = type(conv)(3, 16, 8, stride=2, padding=3)
    with torch.no_grad():
        naive.weight.copy_(torch.nn.functional.pad(conv.weight, (0, 1, 0, 1)))  # same pixels, one zero tap more
    x = torch.rand(2, 3, 16, 24)
    assert not torch.allclose(conv(x), naive(x), atol=1e-3)
    # Trains like the original: the same parameters get the same gradients (float64).
    grads = []
    for m in (copy.deepcopy(reference).double(), copy.deepcopy(model).double()):
        m(x.double()).square().sum().backward()
        grads.append(next(m.parameters()).grad)
    assert float((grads[0] - grads[1]).abs().max()) <= TOLERANCE * float(grads[0].abs().max())
    back = fs.convert(model, to="conv", input_shape=(2, 3, 16, 24))
    assert back.verification.passed and type(model[0]) is type(conv)
    assert torch.equal(model[0].weight, conv.weight)
