"""``LegacyDetect``: YOLOv5's anchor-based detection head as an Ultralytics plugin module, with YOLOv5's parameters,
buffers and decoding. It subclasses Ultralytics' ``Detect`` only so that Ultralytics treats it as a detection head
(export flags, task guessing); none of ``Detect``'s layers or decoding is used."""

from __future__ import annotations

import math

import torch
from torch import nn

try:
    from ultralytics.nn.modules.head import Detect as _DetectBase
except ImportError:  # pragma: no cover - works without Ultralytics, as a plain module
    _DetectBase = nn.Module


class RawLevels(list):
    """YOLOv5's per-level raw logits (a list), which also answers Ultralytics' stride probe ``output["feats"]``."""

    def __getitem__(self, key):
        return self if key == "feats" else super().__getitem__(key)


class LegacyDetect(_DetectBase):
    """YOLOv5 (v1.0-v7.0) anchor-based head.

    Per level ``i``: a 1x1 conv gives ``na * (5 + nc)`` channels, read as (anchor, [x, y, w, h, obj, cls...]).
    Decoding (all YOLOv5 releases): ``s = sigmoid(p)``, ``xy = (2*s_xy - 0.5 + grid) * stride``,
    ``wh = (2*s_wh)**2 * anchor_px``, where ``anchor_px`` is the ``anchor_grid`` buffer (files written by v1.0-v5.0)
    or ``anchors * stride`` (v6.0 and later, which compute it).

    Args:
        nc (int): Number of classes.
        anchors (list[list[float]]): Anchors in pixels, one list ``[w0, h0, w1, h1, ...]`` per level.
        ch (list[int]): Input channels per level.
        stride (list[float]): Stride of each level.
        anchor_grid_buffer (bool): Keep YOLOv5's ``anchor_grid`` buffer (files written before v6.0 have it).
        extra (int): A fork's outputs per anchor beyond ``5 + nc`` (yolov5-face: 10 landmark coordinates). Each fork
            places and decodes them its own way, so such a head returns its raw logits only (for checks).

    Shapes:
        Input: list of ``nl`` maps (B, ch[i], H/stride[i], W/stride[i]).
        Training: list of raw logits (B, na, H_i, W_i, 5 + nc) per level, as YOLOv5 returns them.
        Eval: ``(y, raw)`` where ``y`` is (B, 4 + nc, N): xywh boxes in input pixels, then class scores
        ``objectness * class probability``; N = sum(na * H_i * W_i) in YOLOv5's order (level, anchor, y, x).
        Export mode returns ``y`` alone.
    """

    def __init__(self, nc: int = 80, anchors=(), ch=(), stride=(), anchor_grid_buffer: bool = True, extra: int = 0):
        nn.Module.__init__(self)  # Detect's own layers are not wanted
        self.nc = nc
        self.extra = extra  # files pickled before it existed have none: read with getattr
        self.no = nc + 5 + extra  # YOLOv5 outputs per anchor (and a fork's extra ones)
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2 if anchors else 0
        self.stride = torch.tensor(stride, dtype=torch.float32)
        anchor_px = torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2)
        # YOLOv5 stores anchors in grid units; `anchors` is also a class attribute of Detect, hence _buffers directly
        self._buffers["anchors"] = anchor_px / self.stride.view(-1, 1, 1)
        if anchor_grid_buffer:
            self.register_buffer("anchor_grid", anchor_px.clone().view(self.nl, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.cv2 = self.cv3 = None  # no Ultralytics branches: fuse()/is_fused() see nothing to do

    @property
    def cv2(self) -> tuple:
        """No Ultralytics box branches: an empty tuple, so ``DetectionModel.load`` compares no branch widths (a data
        descriptor, so checkpoints pickled with ``cv2 = None`` read the same)."""
        return ()

    @cv2.setter
    def cv2(self, value) -> None:
        pass

    @property
    def anchors(self) -> torch.Tensor:
        """Anchors in grid units, (nl, na, 2) (a buffer; a property because ``Detect`` has a class attribute)."""
        return self._buffers["anchors"]

    @property
    def end2end(self) -> bool:
        """Always False: YOLOv5 heads need NMS."""
        return False

    @end2end.setter
    def end2end(self, value) -> None:
        if value:
            raise ValueError("LegacyDetect (YOLOv5 head) has no end-to-end branch; use NMS")

    def fuse(self) -> None:
        """Nothing to fuse in the head (Ultralytics calls this on every Detect)."""

    def bias_init(self) -> None:
        """YOLOv5's initial biases, called by Ultralytics once it has measured ``stride`` on a fresh YAML build
        (anchors kept in grid units are re-expressed if the measured strides differ from the ones assumed)."""
        measured = self.stride.to(torch.float32)
        if "built_stride" in self._buffers and not torch.equal(measured, self._buffers["built_stride"]):
            scale = (self._buffers["built_stride"] / measured).view(-1, 1, 1)
            self._buffers["anchors"] = self._buffers["anchors"] * scale
        with torch.no_grad():
            for conv, stride in zip(self.m, measured.tolist()):
                bias = conv.bias.view(self.na, -1)
                bias[:, 4] += math.log(8 / (640 / stride) ** 2)  # about 8 objects per 640 image
                bias[:, 5 : 5 + self.nc] += math.log(0.6 / (self.nc - 0.99)) if self.nc > 1 else 0.0

    def decode(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """Raw logits (B, na, ny, nx, no) of level ``i`` -> (B, na*ny*nx, no): xywh pixels, objectness, classes."""
        bs, _, ny, nx, _ = p.shape
        ys = torch.arange(ny, device=p.device, dtype=p.dtype)
        xs = torch.arange(nx, device=p.device, dtype=p.dtype)
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2)
        s = p.sigmoid()
        xy = (s[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i].to(p.dtype)
        grid_px = self._buffers.get("anchor_grid")  # (nl, 1, na, 1, 1, 2) pixels; else grid units times stride
        anchor_px = grid_px[i] if grid_px is not None else self.anchors[i] * self.stride[i]
        wh = (s[..., 2:4] * 2) ** 2 * anchor_px.view(1, self.na, 1, 1, 2).to(p.dtype)
        return torch.cat((xy, wh, s[..., 4:]), -1).view(bs, -1, self.no)

    def forward(self, x: list[torch.Tensor]):
        """See the class docstring for the shapes."""
        raw = []
        for i in range(self.nl):
            p = self.m[i](x[i])
            bs, _, ny, nx = p.shape
            raw.append(p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training or getattr(self, "extra", 0):  # a fork's extra outputs: its decoding is its own
            return RawLevels(raw)
        y = torch.cat([self.decode(p, i) for i, p in enumerate(raw)], 1)  # (B, N, 5 + nc), YOLOv5's own layout
        boxes = y[..., :4]
        if getattr(self, "xyxy", False):
            boxes = torch.cat((boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2), -1)
        out = torch.cat((boxes, y[..., 5:] * y[..., 4:5]), -1).permute(0, 2, 1)
        return out if self.export else (out, raw)

    def extra_repr(self) -> str:
        return f"nc={self.nc}, na={self.na}, stride={self.stride.tolist()}"
