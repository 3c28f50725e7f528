"""Print which Focus conv channel feeds each tap of the equivalent strided kernel, per order (for the README).

    python scripts/weight_map.py [--block-size 2] [--kernel 3] [--channels 3]

Each cell of the (bs*k) x (bs*k) grid of input channel c is ``ch@(u,v)``: the tap takes Focus weight
``w[o, ch, u, v]``. The grid is computed with ``focus_to_conv_weight`` itself, not from the formula.
"""

from __future__ import annotations

import argparse

import torch

from focus_surgery import focus_to_conv_weight
from focus_surgery.orders import ORDERS


def tap_sources(block_size: int, kernel: int, channels: int, order: str) -> list[list[list[str]]]:
    """For each input channel, the grid of 'ch@(u,v)' labels of the strided kernel's taps."""
    focus_channels = channels * block_size * block_size
    # Encode (channel, u, v) in the weight values, then read them back from the remapped kernel.
    codes = torch.arange(focus_channels * kernel * kernel, dtype=torch.float64).reshape(
        1, focus_channels, kernel, kernel
    )
    big = focus_to_conv_weight(codes, block_size, order)[0].long()
    grids = []
    for c in range(channels):
        rows = []
        for row in big[c].tolist():
            rows.append([f"{v // (kernel * kernel)}@({v % (kernel * kernel) // kernel},{v % kernel})" for v in row])
        grids.append(rows)
    return grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block-size", type=int, default=2)
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--channel", type=int, default=0, help="input channel whose grid to print")
    args = parser.parse_args()
    size = args.block_size * args.kernel
    for order in ORDERS:
        grid = tap_sources(args.block_size, args.kernel, args.channels, order)[args.channel]
        print(f"order={order}: {size}x{size} kernel of input channel {args.channel}, cell = focus channel@(u,v)")
        width = max(len(cell) for row in grid for cell in row)
        for row in grid:
            print("  " + " ".join(cell.rjust(width) for cell in row))
        print()


if __name__ == "__main__":
    main()
