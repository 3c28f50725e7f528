"""Registered space-to-depth timm models: registry, features, pretrained files, in_chans, exact folding."""

from __future__ import annotations

import copy
import pathlib
import subprocess
import sys

import pytest
import torch

import focus_surgery as fs

timm = pytest.importorskip("timm")  # optional third-party package: skip without it
from focus_surgery.integrations import timm as fs_timm  # noqa: E402  ours: an import error fails

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["resnet18_s2d", "resnet18_s2d_focus", "convnext_atto_s2d", "convnext_atto_s2d_focus"]


def _build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def test_import_registers_without_importing_timm():
    """`import focus_surgery` stays timm-free; the models appear once timm is imported, in either order."""
    code = (
        "import sys, focus_surgery; assert 'timm' not in sys.modules; import timm; "
        "print(','.join(timm.list_models('*s2d*')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    out = out.strip()
    assert set(out.split(",")) == set(fs_timm.model_names())
    code = "import timm, focus_surgery; print(timm.create_model('resnet18_s2d').conv1[0].block_size)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "4"


def test_import_works_without_timm():
    code = (
        "import sys, warnings; warnings.simplefilter('error'); sys.modules['timm'] = None  # timm not installed\n"
        "import torch, focus_surgery as fs\n"
        "model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1))\n"
        "print(len(fs.convert(model, to='s2d', input_shape=(1, 3, 8, 8)).replaced))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_registry_lists_every_variant_and_register_is_idempotent():
    names = fs_timm.register()
    assert fs_timm.register() == names
    assert set(names) <= set(timm.list_models("*s2d*"))
    for family in ("resnet18", "resnet50", "convnext_tiny"):
        assert {f"{family}_s2d", f"{family}_s2d_focus"} <= set(names)
    assert timm.models.get_pretrained_cfg("resnet50_s2d").architecture == "resnet50_s2d"


@pytest.mark.parametrize("name", SMALL)
def test_stem_form(name):
    model = _build(name)
    s2d = [m for m in model.modules() if isinstance(m, fs.SpaceToDepth)]
    assert len(s2d) == 1
    if name.endswith("_focus"):
        assert (s2d[0].block_size, s2d[0].order) == (2, "yolov5")
    else:
        assert (s2d[0].block_size, s2d[0].order) == (4, "timm")


@pytest.mark.parametrize("name", SMALL)
def test_features_only_reductions_match_feature_maps(name):
    model = _build(name, features_only=True)
    x = torch.rand(1, 3, 64, 96)
    features = model(x)
    reductions = model.feature_info.reduction()
    assert len(features) == len(reductions) == (5 if name.startswith("resnet") else 4)
    for feature, reduction, channels in zip(features, reductions, model.feature_info.channels()):
        assert feature.shape[1:] == (channels, 64 // reduction, 96 // reduction)
    base = _build(name.split("_s2d")[0], features_only=True)
    expected = base.feature_info.reduction()
    if name.startswith("resnet") and not name.endswith("_focus"):
        expected[0] = 4  # TResNet-style stem: space-to-depth(4) replaces the 7x7/2 conv and the max-pool
    assert reductions == expected


@pytest.mark.parametrize("name", ["resnet18_s2d", "convnext_atto_s2d_focus"])
def test_num_classes_in_chans_drop_path_rate(name):
    model = _build(name, num_classes=7, in_chans=5, drop_path_rate=0.1)
    assert model(torch.rand(2, 5, 64, 64)).shape == (2, 7)
    stem_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    block_size = next(m for m in model.modules() if isinstance(m, fs.SpaceToDepth)).block_size
    assert stem_conv.in_channels == 5 * block_size**2
    drop_rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert drop_rates and max(drop_rates) == pytest.approx(0.1)
    assert not [m for m in _build(name).modules() if type(m).__name__ == "DropPath"]


@pytest.mark.parametrize("name", ["resnet18_s2d_focus", "convnext_atto_s2d"])
def test_pretrained_file_overlay(tmp_path, name):
    """pretrained=True with pretrained_cfg_overlay=dict(file=...) loads our own saved file, also as features."""
    source = _build(name)
    path = tmp_path / f"{name}.pth"
    torch.save({"state_dict": source.state_dict()}, path)  # a training checkpoint wrapper is unwrapped
    torch.manual_seed(1)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(source(x), loaded(x))
    head = timm.create_model(name, pretrained=True, num_classes=3, pretrained_cfg_overlay=dict(file=str(path)))
    assert head(x).shape == (1, 3)
    features = timm.create_model(name, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(features.eval()(x)[-1], source.forward_features(x))


def _grey_check(rgb: torch.nn.Module, grey: torch.nn.Module, size: int, tolerance: float = 1e-10) -> None:
    """The 1-channel model on a grey image gives the RGB model's output on that image replicated to RGB.

    Exact (1e-10 in float64) when the adapted weights were computed in float64; a float32 model holds the summed
    weights rounded to float32, hence the looser tolerance there.
    """
    image = torch.rand(2, 1, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = copy.deepcopy(rgb).double().eval()(image.expand(-1, 3, -1, -1).contiguous())
        actual = copy.deepcopy(grey).double().eval()(image)
    scale = float(expected.abs().max())
    assert float((expected - actual).abs().max()) <= tolerance * max(1.0, scale)


@pytest.mark.parametrize("name", ["resnet18_s2d", "resnet18_s2d_focus", "convnext_atto_s2d"])
def test_grey_model_exact_in_float64(name):
    rgb = _build(name).double()
    grey = _build(name, in_chans=1).double()
    grey.load_state_dict(fs_timm.adapt_state_dict_in_chans(rgb.state_dict(), grey))
    _grey_check(rgb, grey, 64)


@pytest.mark.parametrize("in_chans", [1, 2, 4, 6])
@pytest.mark.parametrize("name", ["resnet18_s2d", "resnet18_s2d_focus"])
def test_pretrained_in_chans_adapted_per_phase(tmp_path, name, in_chans):
    source = _build(name)
    path = tmp_path / "rgb.pth"
    torch.save(source.state_dict(), path)
    model = timm.create_model(name, pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=dict(file=str(path)))
    model.eval()
    assert model.conv1[1].weight.shape[1] == in_chans * model.conv1[0].block_size ** 2
    if in_chans == 1:
        _grey_check(source, model, 64, tolerance=1e-6)  # float32 weights: see _grey_check
    # Per phase: as one strided conv, the adapted stem is timm's own adaptation of the RGB stem as one conv.
    bs, order = model.conv1[0].block_size, model.conv1[0].order
    folded = fs.focus_to_conv_weight(model.conv1[1].weight.detach(), bs, order)
    rgb_folded = fs.focus_to_conv_weight(source.conv1[1].weight.detach(), bs, order)
    expected = timm.models.adapt_input_conv(in_chans, rgb_folded)
    assert torch.allclose(folded, expected, rtol=1e-6, atol=1e-7)


def test_tresnet_in_chans_adapted_per_phase():
    """timm's TResNet stem adapts only to 1 channel; ours to any, per pixel phase (timm issue #2445).

    A one-block-per-stage TResNet (timm's own class, the stem of tresnet_m) keeps the test fast.
    """
    from timm.models.tresnet import TResNet

    torch.manual_seed(0)
    rgb = TResNet(layers=[1, 1, 1, 1], num_classes=10).double().eval()
    rgb_stem = fs.focus_to_conv_weight(rgb.body.conv1.conv.weight.detach(), 4, "timm")
    for in_chans in (1, 2, 4, 6):
        model = TResNet(layers=[1, 1, 1, 1], num_classes=10, in_chans=in_chans).double().eval()
        model.load_state_dict(fs_timm.adapt_state_dict_in_chans(rgb.state_dict(), model))
        if in_chans == 1:
            _grey_check(rgb, model, 64)
        if in_chans == 6:  # RGB repeated twice and halved: the RGB image repeated is seen like the RGB image
            image = torch.rand(1, 3, 64, 64, dtype=torch.float64)
            with torch.no_grad():
                expected, actual = rgb(image), model(image.repeat(1, 2, 1, 1))
            assert float((expected - actual).abs().max()) <= 1e-10 * max(1.0, float(expected.abs().max()))
        stem = fs.focus_to_conv_weight(model.body.conv1.conv.weight.detach(), 4, "timm")
        expected = timm.models.adapt_input_conv(in_chans, rgb_stem)  # computed in float32 by timm
        assert torch.allclose(stem, expected, rtol=1e-6, atol=1e-7)


def test_adapt_rejects_incompatible_weights():
    model = _build("resnet18_s2d")
    state = model.state_dict()
    state["conv1.1.weight"] = torch.zeros(32, 48, 3, 3)
    with pytest.raises(ValueError, match="conv1.1.weight"):
        fs_timm.adapt_state_dict_in_chans(state, model)


@pytest.mark.parametrize("name", SMALL)
def test_registered_stem_folds_to_one_conv_and_back(name):
    model = _build(name)
    reference = _build(name)
    report = fs.convert(model, to="conv", input_shape=(1, 3, 64, 64))
    assert len(report.replaced) == 1 and report.verification.passed
    assert report.verification.max_rel_err <= 1e-10
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bs = 4 if not name.endswith("_focus") else 2
    stride = 4 if (name.startswith("convnext") or not name.endswith("_focus")) else 2
    assert convs[0].stride == (stride, stride) and convs[0].in_channels == 3
    assert convs[0].kernel_size == (3 * bs, 3 * bs)
    back = fs.convert(model, to="s2d", input_shape=(1, 3, 64, 64))
    assert back.verification.max_rel_err <= 1e-10
    assert fs.verify(reference, model, input_shape=(1, 3, 64, 64)).passed


@pytest.mark.parametrize("order", fs.ORDERS)
@pytest.mark.parametrize("block_size", [2, 3, 4, 8, 16])
def test_per_phase_adaptation_every_block_size_and_order(block_size, order):
    """Grey input to the 1-channel stem == grey replicated to RGB into the RGB stem; same for RGB repeated twice."""
    from focus_surgery.in_chans import adapt_s2d_input_channels

    torch.manual_seed(block_size)
    weight = torch.randn(5, 3 * block_size**2, 3, 3, dtype=torch.float64)
    s2d = fs.SpaceToDepth(block_size, order)
    grey = torch.rand(2, 1, 4 * block_size, 4 * block_size, dtype=torch.float64)
    rgb = torch.rand(2, 3, 4 * block_size, 4 * block_size, dtype=torch.float64)
    conv = torch.nn.functional.conv2d
    cases = [(grey, grey.expand(-1, 3, -1, -1), 1), (rgb.repeat(1, 2, 1, 1), rgb, 6)]
    for image, rgb_image, in_chans in cases:
        adapted = adapt_s2d_input_channels(weight, in_chans, block_size, order)
        assert adapted.shape == (5, in_chans * block_size**2, 3, 3)
        expected = conv(s2d(rgb_image.contiguous()), weight, padding=1)
        error = float((conv(s2d(image), adapted, padding=1) - expected).abs().max())
        assert error <= 1e-12 * max(1.0, float(expected.abs().max()))


def test_pretrained_safetensors_file_with_other_in_chans(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    source = _build("convnext_atto_s2d_focus")
    path = tmp_path / "rgb.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    grey = timm.create_model(
        "convnext_atto_s2d_focus", pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path))
    )
    _grey_check(source, grey.eval(), 64, tolerance=1e-6)  # float32 weights: see _grey_check
