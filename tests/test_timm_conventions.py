"""Our layers and registered timm models follow the conventions timm's own model tests check (tests/test_models.py):
torch.fx (plain and timm's FX feature extraction), TorchScript, torch.export, torch.compile without graph breaks,
features_only with every feature_cls, forward_intermediates, default cfgs, keywords of the base model, and no state
shared between calls. Written here as our own checks, so a regression fails our CI.
"""

from __future__ import annotations

import copy
import pathlib
import re
import warnings

import pytest
import torch
from torch import nn

import focus_surgery as fs

timm = pytest.importorskip("timm")
fs_timm = pytest.importorskip("focus_surgery.integrations.timm")
timm_convs = pytest.importorskip("focus_surgery.integrations.timm_convs")
timm_version = pytest.importorskip("focus_surgery.integrations.timm_version")

SMALL = ["resnet18_s2d", "resnet18_s2d_focus", "convnext_atto_s2d", "convnext_atto_s2d_focus"]
TINY = dict(resnet=dict(layers=(1, 1, 1, 1)), convnext=dict(depths=(1, 1, 1, 1)))  # same stems, faster


def _tiny(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **TINY[name.split("1")[0].split("_")[0]], **kwargs).eval()


def _layers() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Every focus-surgery layer, and the space-to-depth forms convert builds from timm's conv types, in 3 chains
    (one compile each keeps the test fast)."""
    from timm.layers import Conv2dSame, ScaledStdConv2dSame, StdConv2d

    torch.manual_seed(0)
    orders = [m for o in fs.ORDERS for m in (fs.SpaceToDepth(2, o), fs.DepthToSpace(2, fs.ORDERS[0]))]
    blocks = nn.Sequential(fs.Focus(3, 8, 3), fs.SPDConv(8, 8, 2, pad=(1, 0, 1, 0)))
    convs = nn.Sequential(Conv2dSame(3, 8, 3, 2), StdConv2d(8, 8, 7, 2, padding=3), ScaledStdConv2dSame(8, 8, 3, 2))
    fs.convert(convs, to="s2d", scope="all", input_shape=(1, 3, 16, 16))
    assert [type(m).__name__ for m in convs] == [
        "SpaceToDepthConv2dSame",
        "SpaceToDepthStdConv",
        "SpaceToDepthScaledStdConv",
    ]
    return [
        ("SpaceToDepth-DepthToSpace", nn.Sequential(*orders), (2, 3, 8, 12)),
        ("Focus-SPDConv", blocks.eval(), (2, 3, 16, 24)),
        ("timm-convs-s2d", convs.eval(), (2, 3, 35, 51)),  # odd for the SAME conv; 18x26 for the StdConv2d
    ]


LAYERS = _layers()


@pytest.mark.parametrize("name, layer, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_traces_scripts_exports_compiles(name, layer, shape):
    x = torch.rand(shape)
    with torch.no_grad():
        expected = layer(x)
        assert torch.equal(torch.fx.symbolic_trace(layer)(x), expected)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.14
            assert torch.equal(torch.jit.script(layer)(x), expected)
        assert torch.allclose(torch.export.export(layer, (x,)).module()(x), expected, rtol=0, atol=1e-6)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    with torch.no_grad():
        assert torch.equal(compiled(x), expected)


@pytest.mark.parametrize("order", fs.ORDERS)
def test_divisibility_error_survives_fx_and_script(order):
    layer = fs.SpaceToDepth(4, order)
    bad = torch.rand(1, 3, 8, 10)
    traced = torch.fx.symbolic_trace(layer)
    assert any(n.op == "call_function" and n.target.__name__ == "check_divisible" for n in traced.graph.nodes)
    for module in (layer, traced):
        with pytest.raises(ValueError, match=r"8x10\) must be divisible by block_size 4"):
            module(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(layer)
    with pytest.raises(Exception, match=r"8x10\) must be divisible by block_size 4"):
        scripted(bad)
    with pytest.raises(Exception, match="not divisible by block_size"):
        torch.fx.symbolic_trace(fs.DepthToSpace(2, order))(torch.rand(1, 6, 2, 2))


@pytest.mark.parametrize("name", SMALL)
def test_model_fx_forward_backward_script_export(name):
    """As timm's test_model_forward_fx / backward_fx / forward_torchscript, plus torch.export (one per family)."""
    model = _tiny(name, num_classes=7)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
        assert torch.equal(traced(x), expected)
    traced.train()(x).mean().backward()
    assert all(p.grad is not None for p in traced.parameters())
    if name.endswith("_focus"):  # TorchScript and export once per model family: the slow part
        return
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            assert torch.allclose(torch.jit.script(model)(x), expected, rtol=1e-5, atol=1e-6)
        exported = torch.export.export(model, (x,)).module()
        assert torch.allclose(exported(x), expected, rtol=1e-5, atol=1e-6)


def _timm_fx(model: nn.Module) -> nn.Module:
    """The model traced the way timm's FX tests trace it (timm's leaf modules and functions), output node only."""
    last = timm.models.get_graph_node_names(model)[1][-1]
    return timm.models.GraphExtractNet(model, [last])


def test_converted_models_trace_and_compile_without_graph_breaks():
    """Every converted form traces with FX and compiles as one graph: s2d stems, folded stems, SAME convs."""
    torch.manual_seed(0)
    same = timm.create_model("tf_mobilenetv3_small_minimal_100", num_classes=5).eval()  # Conv2dSame everywhere
    fs.convert(same, to="s2d", scope="all", order="pixel_unshuffle", input_shape=(1, 3, 64, 64))
    folded = _tiny("resnet18_s2d", num_classes=5)
    fs.convert(folded, to="conv", input_shape=(1, 3, 64, 64))
    every = _tiny("resnet18_s2d_focus", num_classes=5)
    fs.convert(every, to="s2d", scope="all", input_shape=(1, 3, 64, 64))
    cases = [(same, torch.rand(1, 3, 65, 63)), (folded, torch.rand(1, 3, 64, 64)), (every, torch.rand(1, 3, 64, 96))]
    for model, x in cases:
        with torch.no_grad():
            expected = model(x)
            assert torch.allclose(_timm_fx(model)(x), expected, rtol=1e-5, atol=1e-6)
    part = nn.Sequential(every.conv1, every.bn1, every.act1, every.maxpool, every.layer1, every.layer2)
    x = torch.rand(1, 3, 64, 96)
    torch._dynamo.reset()
    compiled = torch.compile(part, fullgraph=True, backend="eager")  # s2d stem, SPDConv with pads, downsample
    with torch.no_grad():
        assert torch.allclose(compiled(x), part(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SMALL)
def test_every_feature_cls_gives_the_same_features(name):
    """features_only with list (default), dict, hook, fx and getter: same maps, shapes as feature_info says."""
    x = torch.rand(1, 3, 64, 96)
    reference = _tiny(name, features_only=True)
    with torch.no_grad():
        expected = reference(x)
    reductions = reference.feature_info.reduction()
    for feature, reduction, channels in zip(expected, reductions, reference.feature_info.channels()):
        assert feature.shape[1:] == (channels, 64 // reduction, 96 // reduction)
    for feature_cls in ("dict", "hook", "fx", "getter"):
        model = _tiny(name, features_only=True, feature_cls=feature_cls)  # same seed: same weights
        with torch.no_grad():
            out = model(x)
        out = list(out.values()) if isinstance(out, dict) else out
        assert len(out) == len(expected) and all(torch.equal(o, e) for o, e in zip(out, expected)), feature_cls


@pytest.mark.parametrize("name", SMALL)
def test_forward_intermediates(name):
    """As timm's test_model_forward_intermediates: one map per feature_info entry, the same last output."""
    model = _tiny(name)
    x = torch.rand(1, 3, 64, 96)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x)
        assert torch.allclose(output, model.forward_features(x))
        only = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(intermediates) == len(info.channels()) >= 4
    for feature, reduction, channels in zip(intermediates, info.reduction(), info.channels()):
        assert feature.shape[1:] == (channels, 64 // reduction, 96 // reduction)
    assert len(only) == 1 and torch.equal(only[0], intermediates[-1])


def test_models_are_filed_under_timm_modules_its_tests_select():
    """timm's tests pick forward_intermediates models by module name: ours are in 'resnet' and 'convnext'."""
    assert set(fs_timm.model_names()) <= set(timm.list_models(module="resnet") + timm.list_models(module="convnext"))
    assert {n for n in fs_timm.model_names() if n.startswith("resnet")} <= set(timm.list_models(module="resnet"))
    assert {n for n in fs_timm.model_names() if n.startswith("convnext")} <= set(timm.list_models(module="convnext"))


def test_no_state_shared_between_calls():
    """The issue's leak: a features_only call with out_indices or feature_cls must not change later calls."""
    x = torch.rand(1, 3, 32, 32)

    def levels(name: str, **kwargs) -> int:
        with torch.no_grad():
            return len(_tiny(name, features_only=True, **kwargs)(x))

    for name in ("convnext_atto_s2d", "resnet18_s2d"):
        assert levels(name, out_indices=(1, 2)) == 2
        levels(name, feature_cls="getter")
        for other in SMALL:
            assert levels(other) == (5 if other.startswith("resnet") else 4), other
    a, b = _tiny("resnet18_s2d"), _tiny("resnet18_s2d")
    assert a.pretrained_cfg is not b.pretrained_cfg
    a.pretrained_cfg["mean"] = (0.0, 0.0, 0.0)
    assert _tiny("resnet18_s2d").pretrained_cfg["mean"] != (0.0, 0.0, 0.0)


@pytest.mark.parametrize("name", SMALL)
def test_feature_cfg_keyword_accepted(name):
    """timm's resnet18 takes feature_cfg=; so do ours (and our ConvNeXts, on top of their own defaults)."""
    model = _tiny(name, features_only=True, feature_cfg=dict(out_indices=(2, 3)))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        features = model(x)
    assert len(features) == 2
    if name.startswith("resnet"):
        base = timm.create_model("resnet18", features_only=True, feature_cfg=dict(out_indices=(2, 3))).eval()
        with torch.no_grad():
            assert [f.shape for f in features] == [f.shape for f in base(x)]


@pytest.mark.parametrize("name", SMALL)
def test_default_cfgs(name):
    """As timm's test_model_default_cfgs: first_conv and classifier name weights, pool_size matches the features."""
    model = _tiny(name)
    cfg, state = model.default_cfg, model.state_dict()
    assert cfg is model.pretrained_cfg
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    with torch.no_grad():
        features = model.forward_features(torch.rand(1, *cfg["input_size"]))
    assert features.shape[-2:] == cfg["pool_size"] and features.shape[1] == model.num_features
    model.reset_classifier(0)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, model.num_features)


def test_timm_version_checked_at_registration():
    """Below the version CI tests, registration fails with one line naming the range; pyproject declares it."""
    assert timm_version.check_timm(timm.__version__) == timm.__version__
    for old in ("1.0.28", "0.9.16"):
        with pytest.raises(RuntimeError, match=re.escape(f"needs timm>={timm_version.MIN_TIMM},<2, found timm {old}")):
            timm_version.check_timm(old)
    with pytest.raises(RuntimeError, match="found timm 2.0.0"):
        timm_version.check_timm("2.0.0")
    pyproject = (pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'"timm{timm_version.SUPPORTED_TIMM}"' in pyproject
    requirements = (pathlib.Path(__file__).resolve().parents[1] / "requirements-dev.txt").read_text()
    assert f"timm=={timm_version.MIN_TIMM}" in requirements  # CI runs the lowest declared timm


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_in_chans_without_timm_traits(tmp_path, monkeypatch, in_chans):
    """timm < 1.0.31 has no model traits: its loader adapts the conv named by the cfg's first_conv, which for a
    space-to-depth stem fails and drops the weight silently. Our models turn that off through the public cfg, so
    the stem still loads adapted per phase with the traits lookup gone."""
    import timm.models._builder as builder

    source = _tiny("resnet18_s2d")
    path = tmp_path / "rgb.pth"
    torch.save(source.state_dict(), path)
    monkeypatch.setattr(builder, "get_model_traits", lambda model: {})  # as timm < 1.0.31 reads only the cfg
    torch.manual_seed(1)
    model = _tiny("resnet18_s2d", pretrained=True, in_chans=in_chans, pretrained_cfg_overlay=dict(file=str(path)))
    expected = fs_timm.adapt_state_dict_in_chans(source.state_dict(), model)["conv1.1.weight"]
    assert torch.equal(model.conv1[1].weight, expected)
    assert model.pretrained_cfg["first_conv"] == "conv1.1"  # the cfg still names the stem conv
    from focus_surgery.integrations.timm_models.resnet import SpaceToDepthResNet

    assert "_traits" not in vars(SpaceToDepthResNet(layers=(1, 1, 1, 1), block=timm.models.resnet.BasicBlock))


def test_round_trip_of_our_models_keeps_parameter_names():
    """The issue's rename: resnet18_s2d -> conv -> s2d used to give conv1.1.conv.weight; now conv1.1.weight."""
    model = _tiny("resnet18_s2d")
    reference = copy.deepcopy(model)
    fs.convert(model, to="conv", input_shape=(1, 3, 64, 64))
    assert isinstance(model.conv1[0], fs.layers.FoldedSpaceToDepth) and not model.conv1[0].state_dict()
    report = fs.convert(model, to="s2d", input_shape=(1, 3, 64, 64))
    assert report.narrowed_inputs and "divisible by 4" in report.narrowed_inputs[0]
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in reference.named_modules()]
    assert list(model.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_declared_ultralytics_range_is_the_tested_one():
    """pyproject's Ultralytics range is the integration's, and its lower bound is the version CI installs."""
    fs_ultralytics = pytest.importorskip("focus_surgery.integrations.ultralytics")
    root = pathlib.Path(__file__).resolve().parents[1]
    assert f'"ultralytics{fs_ultralytics.SUPPORTED_VERSIONS}"' in (root / "pyproject.toml").read_text()
    low = ".".join(map(str, fs_ultralytics._SUPPORTED_RANGE[0]))
    assert fs_ultralytics.SUPPORTED_VERSIONS.startswith(f">={low},")
    assert f"ultralytics=={low}" in (root / "requirements-dev.txt").read_text()
