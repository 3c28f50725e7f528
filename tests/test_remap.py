"""Weight remapping, exhaustively: every order x block size x kernel x bias, values and gradients in float64."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from focus_surgery import (
    SpaceToDepth,
    conv_to_focus_weight,
    focus_to_conv_weight,
    s2d_to_strided_conv,
    strided_conv_to_s2d,
)
from focus_surgery.orders import ORDERS, channel_index

EXACT = 1e-10
CASES = list(itertools.product(ORDERS, [2, 3, 4], [1, 3, 5], [False, True]))


@pytest.mark.parametrize("order,bs,k,bias", CASES)
def test_focus_equals_strided_conv_values_and_gradients(order, bs, k, bias):
    x = torch.randn(2, 3, 4 * bs, 7 * bs, dtype=torch.float64, requires_grad=True)  # batched, non-square
    w = torch.randn(5, 3 * bs * bs, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    p = k // 2
    focus_out = F.conv2d(SpaceToDepth(bs, order)(x), w, b, 1, p)

    x2 = x.detach().clone().requires_grad_(True)
    big = focus_to_conv_weight(w.detach(), bs, order).requires_grad_(True)
    b2 = b.detach().clone().requires_grad_(True) if bias else None
    conv_out = F.conv2d(x2, big, b2, bs, bs * p)

    assert big.shape == (5, 3, bs * k, bs * k)
    assert conv_out.shape == focus_out.shape
    assert (conv_out - focus_out).abs().max() <= EXACT
    # The same upstream gradient gives the same input gradient and, mapped back, the same weight gradient.
    upstream = torch.randn_like(focus_out)
    focus_out.backward(upstream)
    conv_out.backward(upstream)
    assert (x.grad - x2.grad).abs().max() <= EXACT
    assert (conv_to_focus_weight(big.grad, bs, order) - w.grad).abs().max() <= EXACT
    if bias:
        assert (b.grad - b2.grad).abs().max() <= EXACT


@pytest.mark.parametrize("order,bs", list(itertools.product(ORDERS, [2, 3, 4])))
def test_weight_map_is_the_guide_formula(order, bs):
    w = torch.randn(2, 3 * bs * bs, 2, 3, dtype=torch.float64)  # non-square kernel
    big = focus_to_conv_weight(w, bs, order)
    for c, dy, dx, u, v in itertools.product(range(3), range(bs), range(bs), range(2), range(3)):
        assert torch.equal(big[:, c, bs * u + dy, bs * v + dx], w[:, channel_index(c, dy, dx, 3, bs, order), u, v])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("order,bs", list(itertools.product(ORDERS, [2, 3, 4])))
def test_round_trips_are_bit_identical(dtype, order, bs):
    w = torch.randn(4, 3 * bs * bs, 3, 3).to(dtype)
    assert torch.equal(conv_to_focus_weight(focus_to_conv_weight(w, bs, order), bs, order), w)
    big = torch.randn(4, 3, 2 * bs, 3 * bs).to(dtype)
    back = focus_to_conv_weight(conv_to_focus_weight(big, bs, order), bs, order)
    assert back.dtype == dtype and torch.equal(back, big)


def test_remap_never_modifies_its_input():
    w = torch.randn(4, 12, 3, 3)
    before = w.clone()
    focus_to_conv_weight(w)
    conv_to_focus_weight(focus_to_conv_weight(w))
    strided_conv_to_s2d(torch.randn(4, 3, 7, 7), 2, 3)
    assert torch.equal(w, before)


# Any strided conv -> space-to-depth + stride-1 conv (kernel zero-padding), then back.
GENERAL = [
    # (kernel, stride, padding, expected s2d kernel, expected pad (left, right, top, bottom))
    (7, 2, 3, 4, (2, 1, 2, 1)),  # ResNet stem
    (3, 2, 1, 2, (1, 0, 1, 0)),  # YOLO downsampling conv
    (6, 2, 2, 3, (1, 1, 1, 1)),  # YOLOv5 v6.0 stem = Focus k=3
    (3, 2, 0, 2, (0, 0, 0, 0)),
    (1, 2, 0, 1, (0, 0, 0, 0)),  # ResNet downsample shortcut
    (4, 4, 0, 1, (0, 0, 0, 0)),  # ConvNeXt patchify
    (16, 16, 0, 1, (0, 0, 0, 0)),  # ViT patch embedding
    (5, 3, 2, 2, (1, 0, 1, 0)),
    (2, 4, 1, 2, (1, 1, 1, 1)),
    (1, 2, 2, 1, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("kernel,stride,padding,k,pad", GENERAL)
def test_any_strided_conv_to_s2d_and_back(order, kernel, stride, padding, k, pad):
    weight = torch.randn(4, 3, kernel, kernel, dtype=torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    form = strided_conv_to_s2d(weight, stride, padding, order)
    assert form.weight.shape == (4, 3 * stride * stride, k, k) and form.pad == pad
    for h, w in [(6, 5), (4, 9)]:
        x = torch.randn(2, 3, h * stride, w * stride, dtype=torch.float64)
        ref = F.conv2d(x, weight, bias, stride, padding)
        out = F.conv2d(F.pad(SpaceToDepth(stride, order)(x), form.pad), form.weight, bias)
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= EXACT
    back, back_padding = s2d_to_strided_conv(form.weight, stride, form.pad, order)
    assert torch.equal(back, weight) and back_padding == (padding, padding)


def test_rectangular_kernel_and_padding():
    weight = torch.randn(4, 3, 3, 7, dtype=torch.float64)
    form = strided_conv_to_s2d(weight, 2, (1, 3), "timm")
    x = torch.randn(1, 3, 10, 14, dtype=torch.float64)
    ref = F.conv2d(x, weight, None, 2, (1, 3))
    out = F.conv2d(F.pad(SpaceToDepth(2, "timm")(x), form.pad), form.weight)
    assert out.shape == ref.shape and (out - ref).abs().max() <= EXACT
    back, padding = s2d_to_strided_conv(form.weight, 2, form.pad, "timm")
    assert torch.equal(back, weight) and padding == (1, 3)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: focus_to_conv_weight(torch.randn(4, 10, 3, 3)), "not a multiple of block_size\\*\\*2"),
        (lambda: focus_to_conv_weight(torch.randn(4, 12, 3)), "must be a 4-D conv weight"),
        (lambda: conv_to_focus_weight(torch.randn(4, 3, 7, 7)), "not a multiple of block_size 2"),
        (lambda: focus_to_conv_weight(torch.randn(4, 12, 3, 3), order="nhwc"), "unknown space-to-depth order"),
        (lambda: focus_to_conv_weight(torch.randn(4, 12, 3, 3), block_size=1), "block_size must be an integer"),
        (lambda: strided_conv_to_s2d(torch.randn(4, 3, 3, 3), (2, 1), 1), "differs per axis"),
        (lambda: strided_conv_to_s2d(torch.randn(4, 3, 3, 3), 1, 1), "block_size must be an integer >= 2"),
        (lambda: strided_conv_to_s2d(torch.randn(4, 3, 3, 3), 2, -1), "padding must be >= 0"),
    ],
)
def test_impossible_conversions_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_matches_the_yolov5_v6_conversion_of_a_real_checkpoint():
    """The YOLOv5 fixtures hold a v5.0 Focus weight and the same weight remapped by hand into the v6.0 6x6 stem."""
    import numpy as np
    from pathlib import Path

    folder = Path(__file__).parent / "fixtures" / "yolov5-legacy"
    v5 = np.load(folder / "yolov5s-v5.0-d0.33-w0.125-nc3-seed102-fp32.ref.npz")
    v6 = np.load(folder / "yolov5s-v6.0-convstem-d0.33-w0.125-nc3-seed102-fp32-expected.ref.npz")
    focus = torch.from_numpy(v5["focus_conv_weight"])
    assert torch.equal(focus_to_conv_weight(focus, 2, "yolov5"), torch.from_numpy(v6["stem_conv_weight"]))
    assert torch.equal(conv_to_focus_weight(torch.from_numpy(v6["stem_conv_weight"])), focus)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "bs,k,pad",
    [
        (2, 2, (1, 0, 1, 0)),
        (2, 2, (0, 1, 0, 1)),
        (3, 2, (2, 0, 1, 1)),
        (2, 3, (0, 2, 1, 0)),
        (2, 2, (-1, 0, 0, -1)),
        (2, 2, (-1, -1, 0, 0)),
    ],
)
def test_any_space_to_depth_pad_folds_into_one_strided_conv(order, bs, k, pad):
    """SPD-Conv with any explicit pad (crops too) and no zero taps: the strided conv gets zero taps added, exactly."""
    w = torch.randn(4, 3 * bs * bs, k, k, dtype=torch.float64)
    weight, padding = s2d_to_strided_conv(w, bs, pad, order)
    x = torch.randn(2, 3, 6 * bs, 5 * bs, dtype=torch.float64)
    ref = F.conv2d(F.pad(SpaceToDepth(bs, order)(x), pad), w)
    out = F.conv2d(x, weight, None, bs, padding)
    assert out.shape == ref.shape and (out - ref).abs().max() <= EXACT
