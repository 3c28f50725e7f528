"""Forward passes of yolov7's / YOLOR's ``Model`` and heads, eval mode only (test-only, see README.md)."""

import torch
from torch import nn


def _grid(nx, ny):
    yv, xv = torch.meshgrid([torch.arange(ny), torch.arange(nx)], indexing="ij")
    return torch.stack((xv, yv), 2).view((1, 1, ny, nx, 2)).float()


def _decode(head, i, p, z):
    bs, _, ny, nx = p.shape
    p = p.view(bs, head.na, head.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
    y = p.sigmoid()
    y[..., 0:2] = (y[..., 0:2] * 2.0 - 0.5 + _grid(nx, ny).to(y)) * head.stride[i]
    y[..., 2:4] = (y[..., 2:4] * 2) ** 2 * head.anchor_grid[i]
    z.append(y.view(bs, -1, head.no))
    return p


class IDetect(nn.Module):  # YOLOR paper / yolov7
    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = _decode(self, i, self.im[i](self.m[i](self.ia[i](x[i]))), z)
        return torch.cat(z, 1), x


class IAuxDetect(nn.Module):  # yolov7 W6/E6/D6/E6E
    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = _decode(self, i, self.im[i](self.m[i](self.ia[i](x[i]))), z)
        return torch.cat(z, 1), x[: self.nl]


class Model(nn.Module):
    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x
