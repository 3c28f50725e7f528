"""SpaceToDepth / DepthToSpace against every reference implementation, and Focus against Ultralytics'."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from focus_surgery import ConvBnAct, DepthToSpace, Focus, SPDConv, SpaceToDepth
from focus_surgery.demo import randomize_batchnorm
from focus_surgery.orders import ORDERS, channel_index

BLOCK_SIZES = [2, 3, 4, 8]


def reference_space_to_depth(x, bs, order):
    """Definition of GUIDE section 1, one channel at a time (slow, obviously right)."""
    n, c, h, w = x.shape
    y = torch.empty(n, c * bs * bs, h // bs, w // bs, dtype=x.dtype)
    for ch, dy, dx in itertools.product(range(c), range(bs), range(bs)):
        y[:, channel_index(ch, dy, dx, c, bs, order)] = x[:, ch, dy::bs, dx::bs]
    return y


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_space_to_depth_matches_definition_and_inverts(order, bs):
    x = torch.randn(2, 3, 3 * bs, 5 * bs, dtype=torch.float64)
    y = SpaceToDepth(bs, order)(x)
    assert y.shape == (2, 3 * bs * bs, 3, 5)
    assert torch.equal(y, reference_space_to_depth(x, bs, order))
    assert torch.equal(DepthToSpace(bs, order)(y), x)


@pytest.mark.parametrize("bs", BLOCK_SIZES)
def test_pixel_unshuffle_order_is_torch_pixel_unshuffle(bs):
    x = torch.randn(2, 4, 2 * bs, 3 * bs)
    assert torch.equal(SpaceToDepth(bs, "pixel_unshuffle")(x), F.pixel_unshuffle(x, bs))


def test_yolov5_order_is_focus_slicing():
    x = torch.randn(2, 3, 8, 12)
    sliced = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
    assert torch.equal(SpaceToDepth(2, "yolov5")(x), sliced)


def test_timm_order_is_timm_space_to_depth():
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 3, 16, 24)
    assert torch.equal(SpaceToDepth(4, "timm")(x), timm_layers.SpaceToDepth(4)(x))


@pytest.mark.parametrize("shape", [(1, 3, 7, 8), (1, 3, 8, 9), (2, 1, 5, 5)])
def test_space_to_depth_rejects_sizes_not_divisible(shape):
    with pytest.raises(ValueError, match="must be divisible by block_size 2"):
        SpaceToDepth(2)(torch.randn(shape))


def test_depth_to_space_rejects_channels_not_divisible():
    with pytest.raises(ValueError, match="not divisible by block_size"):
        DepthToSpace(2)(torch.randn(1, 6, 4, 4))


def test_layers_script_with_torchscript():
    x = torch.randn(1, 3, 8, 8)
    for order in ORDERS:
        scripted = torch.jit.script(SpaceToDepth(2, order))
        assert torch.equal(scripted(x), SpaceToDepth(2, order)(x))
        inverse = torch.jit.script(DepthToSpace(2, order))
        assert torch.equal(inverse(scripted(x)), x)


def test_focus_loads_ultralytics_state_dict_and_matches():
    modules = pytest.importorskip("ultralytics.nn.modules")
    theirs = randomize_batchnorm(modules.Focus(3, 16, 3)).eval()
    ours = Focus(3, 16, 3).eval()
    ours.load_state_dict(theirs.state_dict())  # strict: same names, same shapes
    assert list(ours.state_dict()) == [
        "conv.conv.weight",
        "conv.bn.weight",
        "conv.bn.bias",
        "conv.bn.running_mean",
        "conv.bn.running_var",
        "conv.bn.num_batches_tracked",
    ]
    x = torch.randn(2, 3, 32, 48)
    assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("bs", [2, 3, 4])
def test_focus_shapes(order, bs):
    focus = Focus(3, 8, k=3, block_size=bs, order=order)
    assert focus(torch.randn(2, 3, 4 * bs, 6 * bs)).shape == (2, 8, 4, 6)
    assert focus.conv.conv.in_channels == 3 * bs * bs


def test_spdconv_same_and_explicit_padding():
    same = SPDConv(3, 8, k=3)
    assert same(torch.randn(1, 3, 16, 24)).shape == (1, 8, 8, 12)
    explicit = SPDConv(3, 8, k=2, pad=(1, 0, 1, 0))
    assert explicit(torch.randn(1, 3, 16, 24)).shape == (1, 8, 8, 12)


def test_conv_bn_act_mirrors_ultralytics_conv():
    modules = pytest.importorskip("ultralytics.nn.modules")
    theirs = randomize_batchnorm(modules.Conv(3, 8, 3, 2)).eval()
    ours = ConvBnAct(3, 8, 3, 2).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(ours(x), theirs(x))
