"""Space-to-depth layers of the Focus family as their repositories write them (slicing + torch.cat)."""

import torch
from torch import nn


def _phases(x: torch.Tensor) -> list[torch.Tensor]:
    # (dy, dx) = (0,0), (1,0), (0,1), (1,1): YOLOv5 / YOLOX Focus, yolov7 and YOLOR ReOrg, YOLOR darknet Reorg
    return [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]


class ReOrg(nn.Module):
    """yolov7 / YOLOR (paper branch) ``models.common.ReOrg``: no weights, (N, C, H, W) -> (N, 4C, H/2, W/2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(_phases(x), 1)


class ShuffledReOrg(nn.Module):
    """A space-to-depth whose phase order is none of the three named ones: (0,0), (0,1), (1,1), (1,0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2], x[..., 1::2, ::2]], 1)


class BaseConv(nn.Module):
    """YOLOX ``BaseConv``: Conv2d(bias=False) + BatchNorm2d(eps 1e-3, momentum 0.03) + SiLU, 'same' padding."""

    def __init__(self, c1: int, c2: int, ksize: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, ksize, stride, (ksize - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Focus(nn.Module):
    """YOLOX ``network_blocks.Focus`` (found by its class name), optionally slicing in another order."""

    def __init__(self, c1: int, c2: int, ksize: int = 1, slicing: str = "yolox"):
        super().__init__()
        self.conv = BaseConv(c1 * 4, c2, ksize, 1)
        self.slicing = slicing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slicing == "yolox":
            y = torch.cat(_phases(x), 1)
        elif self.slicing == "timm":  # (dy, dx) = (0,0), (0,1), (1,0), (1,1)
            y = torch.cat([x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]], 1)
        else:
            y = ShuffledReOrg()(x)
        return self.conv(y)
