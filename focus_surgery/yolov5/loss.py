"""YOLOv5's anchor-based training loss (``ComputeLoss`` of releases v1.0-v7.0 and master) for ``LegacyDetect``, with
each release's own rules (``loss_rules``), bit-identical in float64: box ``1 - IoU``, objectness BCE against the
detached IoU (weighted per level), class BCE against (label-smoothed) one-hot targets, each times its gain."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from .hyp import LOSS_KEYS
from .loss_rules import loss_gains, release_rules

LOSS_NAMES = ("box_loss", "obj_loss", "cls_loss")
# Neighbouring-cell offsets in grid units: the centre cell, then left, up, right, down
_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
_NEIGHBOUR_BIAS = 0.5


def box_overlap(box1: torch.Tensor, box2: torch.Tensor, kind: str = "v7.0", eps: float = 1e-7) -> torch.Tensor:
    """GIoU or CIoU (n,) of paired (n, 4) centre-xywh boxes, exactly as the release ``kind`` computes it
    (``LossRules.overlap``); the aspect-ratio weight ``alpha`` is a constant, as in YOLOv5."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    left1, right1, top1, bottom1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    left2, right2, top2, bottom2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(right1, right2) - torch.max(left1, left2)).clamp(0) * (
        torch.min(bottom1, bottom2) - torch.max(top1, top2)
    ).clamp(0)
    enclose_w = torch.max(right1, right2) - torch.min(left1, left2)
    enclose_h = torch.max(bottom1, bottom2) - torch.min(top1, top2)
    if kind in ("giou", "v3.0"):  # v1.0-v3.0: sizes from the corners, 1e-16 on the first box's area
        w1, h1, w2, h2 = right1 - left1, bottom1 - top1, right2 - left2, bottom2 - top2
        union = (w1 * h1 + 1e-16) + w2 * h2 - inter
        iou = inter / union
        if kind == "giou":
            c_area = enclose_w * enclose_h + 1e-16
            return iou - (c_area - union) / c_area
        diagonal2 = enclose_w**2 + enclose_h**2 + 1e-16
        centre2 = ((left2 + right2) - (left1 + right1)) ** 2 / 4 + ((top2 + bottom2) - (top1 + bottom1)) ** 2 / 4
        v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
        with torch.no_grad():
            alpha = v / (1 - iou + v + 1e-16)
        return iou - (centre2 / diagonal2 + v * alpha)
    if kind in ("v3.1", "v5.0"):  # v3.1-v6.1: sizes from the corners, eps on the heights
        w1, h1 = right1 - left1, bottom1 - top1 + eps
        w2, h2 = right2 - left2, bottom2 - top2 + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    diagonal2 = enclose_w**2 + enclose_h**2 + eps
    centre2 = ((left2 + right2 - left1 - right1) ** 2 + (top2 + bottom2 - top1 - bottom1) ** 2) / 4
    if kind == "v6.2":
        v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps)), 2)
    else:
        v = (4 / math.pi**2) * torch.pow(torch.atan(w2 / h2) - torch.atan(w1 / h1), 2)
    with torch.no_grad():
        if kind == "v3.1":
            alpha = v / ((1 + eps) - iou + v)
        elif kind == "master":
            alpha = v / (1 - iou + v + eps)
        else:
            alpha = v / (v - iou + (1 + eps))
    return iou - (centre2 / diagonal2 + v * alpha)


def complete_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7, corners_wh: bool = False) -> torch.Tensor:
    """CIoU of paired (n, 4) centre-xywh boxes: v5.0-v6.1's formula if ``corners_wh`` else v7.0's (``box_overlap``)."""
    return box_overlap(box1, box2, "v5.0" if corners_wh else "v7.0", eps)


def corners_wh_release(release: str | None) -> bool:
    """True when the release's box overlap takes widths and heights from the corners (v1.0-v6.1; v6.2+ use the
    given ones). A range such as ``"v6.0-v7.0"`` counts as its newest release (``loss_rules.rules_release``)."""
    return release_rules(release).overlap not in ("v6.2", "v7.0", "master")


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
        return (loss * (alpha_t * (1.0 - p_t) ** self.gamma)).mean()  # YOLOv5's `loss *= alpha * modulating`


class YOLOv5Loss:
    """YOLOv5's loss as an Ultralytics criterion: ``criterion(preds, batch) -> (loss * batch_size, items)``.

    Args:
        head (nn.Module): The ``LegacyDetect`` head (``nl``, ``na``, ``nc``, ``anchors`` in grid units).
        hyp (Mapping): Scaled YOLOv5 hyper-parameters (``box``, ``obj``, ``cls``, ``cls_pw``, ``obj_pw``,
            ``anchor_t``, ``fl_gamma``, ``label_smoothing``), see ``hyp.scale_gains``.
        release (str | None): The YOLOv5 release whose rules to follow (``loss_rules``: box overlap, objectness
            balance, label smoothing, neighbour cells, the loss's own gain scaling); v7.0's if None. ``hyp`` is
            ``model.hyp`` as that release's ``train.py`` sets it (``loss_rules.scale_gains``).

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
        self.rules = release_rules(release)
        self.corners_wh = corners_wh_release(release)
        self.nl, self.na, self.nc = head.nl, head.na, head.nc
        self.anchors = head.anchors  # (nl, na, 2) grid units; the live buffer (autoanchor may change it)
        self.balance = self.rules.level_balance(self.nl)
        self.gains = loss_gains(self.hyp, self.nl, self.rules)
        eps = self.hyp["label_smoothing"] if self.rules.label_smoothing else 0.0
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
                iou = box_overlap(torch.cat((pxy, pwh), 1), tbox, self.rules.overlap, self.rules.eps)
                lbox = lbox + (1.0 - iou).mean()
                tobj[img, anchor, gy, gx] = iou.detach().clamp(0).to(dtype)
                if self.nc > 1:
                    t = torch.full_like(ps[:, 5:], self.cls_neg)
                    t[range(n), tcls] = self.cls_pos
                    lcls = lcls + bce_cls(ps[:, 5:], t)
            lobj = lobj + bce_obj(pi[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * self.gains[0], lobj * self.gains[1], lcls * self.gains[2]
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
                if self.rules.old_neighbours:  # v1.0-v2.0
                    right, down = ((gxy % 1 > (1 - _NEIGHBOUR_BIAS)) & (gxy < (gain[[2, 3]] - 1))).T
                else:
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
