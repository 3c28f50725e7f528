"""Rectangular kernels whose height and width need different zero taps in ``strided_conv_to_s2d``: an axis swap of
the taps or of the pad keeps every shape and changes the values, so only a float64 comparison with the conv sees it."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from focus_surgery import SpaceToDepth, s2d_to_strided_conv, strided_conv_to_s2d
from focus_surgery.orders import ORDERS

EXACT = 1e-10
# (kernel (kh, kw), padding (ph, pw), stride): each axis needs its own leading / trailing zero taps
RECTANGULAR = [
    ((3, 5), (1, 2), 2),  # height: 1 zero tap before; width: 1 after (the case)
    ((5, 3), (2, 1), 2),  # the same, axes exchanged
    ((3, 7), (0, 3), 3),  # stride 3: height 0 before / 0 after; width 0 before / 2 after
    ((4, 6), (1, 0), 2),  # even kernels: height 1 before / 1 after; width none
    ((7, 2), (3, 1), 4),
]


def _zero_taps(kernel: int, stride: int, padding: int) -> tuple[int, int]:
    """Zero taps before / after along one axis, from GUIDE section 1 (independently of remap.py)."""
    before = (-padding) % stride
    return before, -(kernel + before) % stride


@pytest.mark.parametrize("order,case", list(itertools.product(ORDERS, RECTANGULAR)))
def test_rectangular_kernel_with_other_taps_per_axis(order, case):
    (kh, kw), (ph, pw), s = case
    assert _zero_taps(kh, s, ph) != _zero_taps(kw, s, pw)  # the case means something: the axes differ
    g = torch.Generator().manual_seed(kh * 10 + kw)
    weight = torch.randn(4, 3, kh, kw, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    form = strided_conv_to_s2d(weight, s, (ph, pw), order)
    # the zero taps of the padded kernel, per axis, sit where GUIDE section 1 puts them
    (h0, h1), (w0, w1) = _zero_taps(kh, s, ph), _zero_taps(kw, s, pw)
    assert form.weight.shape == (4, 3 * s * s, (kh + h0 + h1) // s, (kw + w0 + w1) // s)
    for x_shape in ((2, 3, 4 * s, 6 * s), (1, 3, 7 * s, 3 * s)):  # non-square, both ways round
        x = torch.randn(*x_shape, generator=g, dtype=torch.float64)
        ref = F.conv2d(x, weight, bias, s, (ph, pw))
        out = F.conv2d(F.pad(SpaceToDepth(s, order)(x), form.pad), form.weight, bias)
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) <= EXACT * max(1.0, float(ref.abs().max()))
    back, padding = s2d_to_strided_conv(form.weight, s, form.pad, order)
    assert torch.equal(back, weight) and padding == (ph, pw)
