"""The tiny network of the mmengine fixture (``tests/fixtures/mmengine/``), in plain torch: a YOLOX-style ``Focus``
stem (slicing in YOLOv5 order + ``BaseConv``) or its converted form (``BaseConv(3, C, 6, 2)``), then a small head.

``scripts/make_mmengine_checkpoint.py`` trains it inside an mmengine ``BaseModel`` (the same module names, so the
same state-dict keys: ``backbone.stem.conv.conv.weight``, ...); the tests load the original and the converted files
into this code (strictly) and compare outputs in float64. No mmengine is needed here.
"""

from __future__ import annotations

import torch
from torch import nn


class BaseConv(nn.Module):
    """YOLOX's ``BaseConv``: conv (padding (k-1)//2, no bias) + BatchNorm + SiLU. (N, C1, H, W) -> (N, C2, H/s, W/s)."""

    def __init__(self, c1: int, c2: int, k: int, s: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, (k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    """YOLOX's ``Focus``: (N, C, H, W) -> space-to-depth(2) in YOLOv5 order -> ``BaseConv(4C, C2, k)``."""

    def __init__(self, c1: int, c2: int, k: int = 3):
        super().__init__()
        self.conv = BaseConv(c1 * 4, c2, k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1)
        return self.conv(x)


class Backbone(nn.Module):
    def __init__(self, width: int = 8, converted: bool = False):
        super().__init__()
        self.stem = BaseConv(3, width, 6, 2) if converted else Focus(3, width, 3)
        self.layer = BaseConv(width, 2 * width, 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.stem(x))


class TinyFocusNet(nn.Module):
    """(N, 3, H, W) -> (N, classes) logits; H and W even."""

    def __init__(self, width: int = 8, classes: int = 3, converted: bool = False):
        super().__init__()
        self.backbone = Backbone(width, converted)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean((2, 3)))
