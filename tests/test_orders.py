"""The channel-order table of GUIDE section 1, checked entry by entry."""

import itertools

import pytest

from focus_surgery.orders import ORDERS, channel_index, check_block_size, check_order

FORMULAS = {
    "yolov5": lambda c, dy, dx, C, bs: (dx * bs + dy) * C + c,
    "timm": lambda c, dy, dx, C, bs: (dy * bs + dx) * C + c,
    "pixel_unshuffle": lambda c, dy, dx, C, bs: c * bs * bs + dy * bs + dx,
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("bs", [2, 3, 4])
def test_channel_index_matches_guide(order, bs):
    channels = 3
    seen = set()
    for c, dy, dx in itertools.product(range(channels), range(bs), range(bs)):
        index = channel_index(c, dy, dx, channels, bs, order)
        assert index == FORMULAS[order](c, dy, dx, channels, bs)
        seen.add(index)
    assert seen == set(range(channels * bs * bs))  # a permutation


@pytest.mark.parametrize("bad", ["nchw", "YOLOV5", ""])
def test_unknown_order(bad):
    with pytest.raises(ValueError, match="unknown space-to-depth order"):
        check_order(bad)


@pytest.mark.parametrize("bad", [0, 1, -2, 2.0, True, "2"])
def test_bad_block_size(bad):
    with pytest.raises(ValueError, match="block_size must be an integer >= 2"):
        check_block_size(bad)
