"""YOLOv5's Model and Detect head as the current YOLOv5 code runs them, eval mode (test-only, see README.md)."""

import torch
from torch import nn


class Detect(nn.Module):
    export = False  # class attributes of YOLOv5's Detect: never pickled

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            shape = 1, self.na, ny, nx, 2
            y, xs = torch.arange(ny, dtype=self.anchors.dtype), torch.arange(nx, dtype=self.anchors.dtype)
            yv, xv = torch.meshgrid(y, xs, indexing="ij")
            grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
            anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
            if isinstance(self, Segment):  # (boxes, objectness + classes, mask coefficients)
                xy, wh, conf, mask = x[i].split((2, 2, self.nc + 1, self.no - self.nc - 5), 4)
                xy = (xy.sigmoid() * 2 + grid) * self.stride[i]
                wh = (wh.sigmoid() * 2) ** 2 * anchor_grid
                z.append(torch.cat((xy, wh, conf.sigmoid(), mask), 4).view(bs, -1, self.no))
                continue
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
            z.append(
                torch.cat(((xy * 2 + grid) * self.stride[i], (wh * 2) ** 2 * anchor_grid, conf), 4).view(
                    bs, -1, self.no
                )
            )
        return torch.cat(z, 1), x


class Segment(Detect):
    """v7.0's segmentation head: its pickled ``detect`` is ``Detect.forward`` (a function attribute, pickled as
    ``getattr(models.yolo.Detect, 'forward')``), called as ``self.detect(self, x)``."""

    def forward(self, x):
        p = self.proto(x[0])
        x = self.detect(self, x)
        return (x, p) if self.training else (x[0], p) if self.export else (x[0], p, x[1])


class Model(nn.Module):
    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


class SegmentationModel(Model):
    pass


def attempt_load(path):
    """models/experimental.py attempt_load without fuse: EMA or model, float, eval, compatibility updates."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    for m in model.modules():
        if type(m) is Detect and not isinstance(getattr(m, "anchor_grid", None), list):
            if hasattr(m, "anchor_grid"):
                delattr(m, "anchor_grid")
            m.anchor_grid = [torch.zeros(1)] * m.nl
    return model
