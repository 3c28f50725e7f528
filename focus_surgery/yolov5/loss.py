"""YOLOv5's anchor-based training loss (``utils/loss.py: ComputeLoss`` of releases v3.0-v7.0), for ``LegacyDetect``.

Target assignment: a ground-truth box is matched to every anchor whose width and height ratios to it are all below
``anchor_t`` (both ways), on every level, and to the cell holding its centre plus the two neighbouring cells whose
shared edge is nearest to the centre (within half a cell). Box loss: ``1 - CIoU`` of the decoded prediction
(``xy = 2 sigmoid - 0.5``, ``wh = (2 sigmoid)^2 * anchor``) against the target, averaged per level. Objectness: BCE
against the (detached, clamped) IoU at assigned cells and 0 elsewhere, weighted per level (4.0, 1.0, 0.4 for 3
levels; 4.0, 1.0, 0.25, 0.06, 0.02 otherwise). Classes: BCE against label-smoothed one-hot targets, skipped for one
class. Each part is multiplied by its gain (see ``hyp.scale_gains``); the total is multiplied by the batch size.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .hyp import LOSS_KEYS

LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")
# Neighbouring-cell offsets in grid units: the centre cell, then left, up, right, down
_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
_NEIGHBOUR_BIAS = 0.5


def complete_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7, corners_wh: bool = False) -> torch.Tensor:
    """CIoU of paired boxes given as centre xywh, YOLOv5's formula with its ``eps`` placements.

    Args:
        box1 (torch.Tensor): (n, 4) predictions.
        box2 (torch.Tensor): (n, 4) targets.
        corners_wh (bool): v3.0-v6.1's variant: widths and heights recomputed from the corners and ``eps`` added to
            the heights (v6.2+ use the given ones); the two differ by about 1e-8 relative.

    Returns:
        (torch.Tensor): (n,) CIoU; the aspect-ratio weight ``alpha`` is treated as a constant, as in YOLOv5.
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    left1, right1, top1, bottom1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    left2, right2, top2, bottom2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(right1, right2) - torch.max(left1, left2)).clamp(0) * (
        torch.min(bottom1, bottom2) - torch.max(top1, top2)
    ).clamp(0)
    if corners_wh:
        w1, h1 = right1 - left1, bottom1 - top1 + eps
        w2, h2 = right2 - left2, bottom2 - top2 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclose_w = torch.max(right1, right2) - torch.min(left1, left2)
    enclose_h = torch.max(bottom1, bottom2) - torch.min(top1, top2)
    diagonal2 = enclose_w**2 + enclose_h**2 + eps
    centre2 = ((left2 + right2 - left1 - right1) ** 2 + (top2 + bottom2 - top1 - bottom1) ** 2) / 4
    v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diagonal2 + v * alpha)


def corners_wh_release(release: str | None) -> bool:
    """True for releases before v6.2 (their CIoU recomputes w, h from corners); a v6.0-v7.0 file or a YAML
    model (release unknown) uses v7.0's."""
    return bool(release) and release.startswith(("v1.", "v2.", "v3.", "v4.", "v5.", "v6.0", "v6.1"))


class FocalBCE(nn.Module):
    """BCE-with-logits modulated by ``alpha_t * (1 - p_t) ** gamma`` (YOLOv5's ``FocalLoss``), mean-reduced."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, true)
        prob = torch.sigmoid(pred)
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (loss * alpha_t * (1.0 - p_t) ** self.gamma).mean()


class YOLOv5Loss:
    """YOLOv5's loss as an Ultralytics criterion: ``criterion(preds, batch) -> (loss * batch_size, items)``.

    Args:
        head (nn.Module): The ``LegacyDetect`` head (``nl``, ``na``, ``nc``, ``anchors`` in grid units).
        hyp (Mapping): Scaled YOLOv5 hyper-parameters (``box``, ``obj``, ``cls``, ``cls_pw``, ``obj_pw``,
            ``anchor_t``, ``fl_gamma``, ``label_smoothing``), see ``hyp.scale_gains``.
        release (str | None): The YOLOv5 release whose CIoU variant to use (``corners_wh_release``); v7.0's if None.

    Shapes:
        preds: list of ``nl`` raw maps (B, na, H_i, W_i, 5 + nc), or the eval output ``(y, raw)``.
        batch: Ultralytics' ``batch_idx`` (n,), ``cls`` (n, 1), ``bboxes`` (n, 4) normalised centre xywh.
        Returns ``(loss * B, {"box_loss", "obj_loss", "cls_loss"})``, each item a detached scalar.
    """

    def __init__(self, head: nn.Module, hyp: Mapping[str, Any], release: str | None = None):
        missing = [k for k in LOSS_KEYS if k not in hyp]
        if missing:
            raise ValueError(f"YOLOv5 loss needs hyper-parameters {', '.join(missing)}")
        self.hyp = {k: float(hyp[k]) for k in LOSS_KEYS}
        self.corners_wh = corners_wh_release(release)
        self.nl, self.na, self.nc = head.nl, head.na, head.nc
        self.anchors = head.anchors  # (nl, na, 2) grid units; the live buffer (autoanchor may change it)
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][: self.nl]
        eps = self.hyp["label_smoothing"]
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * eps, 0.5 * eps
        self._criteria: dict = {}  # (dtype, device) -> (class BCE, objectness BCE)

    def criteria(self, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """Class and objectness BCE (focal when ``fl_gamma > 0``) with positive weights in the logits' dtype."""
        key = (dtype, device)
        if key not in self._criteria:
            bce = [
                nn.BCEWithLogitsLoss(pos_weight=torch.tensor([self.hyp[k]], dtype=dtype, device=device))
                for k in ("cls_pw", "obj_pw")
            ]
            if self.hyp["fl_gamma"] > 0:
                bce = [FocalBCE(b, self.hyp["fl_gamma"]) for b in bce]
            self._criteria[key] = tuple(bce)
        return self._criteria[key]

    def __call__(self, preds, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        levels = preds[1] if isinstance(preds, tuple) else preds
        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        total, parts = self.compute(list(levels), targets.to(levels[0]))
        return total, dict(zip(LOSS_NAMES, parts))

    def compute(self, p: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """YOLOv5's ``ComputeLoss.__call__``.

        Args:
            p (list[torch.Tensor]): Raw maps (B, na, H_i, W_i, 5 + nc).
            targets (torch.Tensor): (n, 6) rows ``[image, class, x, y, w, h]``, box normalised to the image.

        Returns:
            (tuple[torch.Tensor, torch.Tensor]): ``(box + obj + cls) * B`` and the detached ``[box, obj, cls]``.
        """
        device, dtype = p[0].device, p[0].dtype
        lbox, lobj, lcls = (torch.zeros(1, device=device, dtype=dtype) for _ in range(3))
        anchors = self.anchors.to(device=device, dtype=dtype)
        bce_cls, bce_obj = self.criteria(dtype, device)
        for i, (pi, (img, anchor, gy, gx, tbox, tcls)) in enumerate(zip(p, self.build_targets(p, targets, anchors))):
            tobj = torch.zeros(pi.shape[:4], dtype=dtype, device=device)
            n = img.shape[0]
            if n:
                ps = pi[img, anchor, gy, gx]  # (n, 5 + nc) predictions at the assigned cells
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchors[i][anchor]
                iou = complete_iou(torch.cat((pxy, pwh), 1), tbox, corners_wh=self.corners_wh)
                lbox = lbox + (1.0 - iou).mean()
                tobj[img, anchor, gy, gx] = iou.detach().clamp(0).to(dtype)
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], self.cls_neg)
                    t[range(n), tcls] = self.cls_pos
                    lcls = lcls + bce_cls(ps[:, 5:], t)
            lobj = lobj + bce_obj(pi[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * self.hyp["box"], lobj * self.hyp["obj"], lcls * self.hyp["cls"]
        return (lbox + lobj + lcls) * p[0].shape[0], torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, p: list[torch.Tensor], targets: torch.Tensor, anchors: torch.Tensor) -> list[tuple]:
        """Assign targets to (image, anchor, cell) per level, in YOLOv5's order.

        Returns:
            (list[tuple]): Per level ``(image, anchor, gy, gx, tbox, tcls)``: indices (m,), the target box (m, 4)
            as centre offset from the cell and wh in grid units, and the class (m,).
        """
        nt, device, dtype = targets.shape[0], targets.device, targets.dtype
        anchor_ids = torch.arange(self.na, device=device, dtype=dtype).view(self.na, 1).repeat(1, nt)
        candidates = torch.cat((targets.repeat(self.na, 1, 1), anchor_ids[..., None]), 2)  # (na, nt, 7)
        offsets = torch.tensor(_OFFSETS, device=device, dtype=dtype) * _NEIGHBOUR_BIAS  # (5, 2)
        out = []
        for i in range(self.nl):
            ny, nx = p[i].shape[2:4]
            gain = torch.ones(7, device=device, dtype=dtype)
            gain[2:6] = torch.tensor([nx, ny, nx, ny], device=device, dtype=dtype)
            t = candidates * gain
            if nt:
                ratio = t[..., 4:6] / anchors[i][:, None]  # (na, nt, 2)
                t = t[torch.max(ratio, 1 / ratio).max(2)[0] < self.hyp["anchor_t"]]
                gxy = t[:, 2:4]
                gxy_inverse = gain[[2, 3]] - gxy
                left, up = ((gxy % 1 < _NEIGHBOUR_BIAS) & (gxy > 1)).T
                right, down = ((gxy_inverse % 1 < _NEIGHBOUR_BIAS) & (gxy_inverse > 1)).T
                keep = torch.stack((torch.ones_like(left), left, up, right, down))  # (5, m)
                t = t.repeat((5, 1, 1))[keep]
                shift = (torch.zeros_like(gxy)[None] + offsets[:, None])[keep]
            else:
                t = candidates[0]
                shift = 0
            img, cls = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, anchor = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            cell = (gxy - shift).long()
            gx, gy = cell[:, 0].clamp_(0, nx - 1), cell[:, 1].clamp_(0, ny - 1)
            out.append((img, anchor, gy, gx, torch.cat((gxy - cell, gwh), 1), cls))
        return out
