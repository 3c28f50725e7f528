"""Validating ``LegacyDetect`` models with Ultralytics' validator and YOLOv5's own ``val.py`` rules.

``install()`` wraps ``DetectionValidator`` in memory, for such models only: YOLOv5's NMS (sorted by confidence
before torchvision's NMS, so tied scores keep the same box), predictions and labels compared in the original image's
pixels with ``val.py``'s gain and unrounded padding, YOLOv5's matching and ``compute_ap``, and, for ``model.val()``,
``val.py``'s IoU threshold (0.6) and image resizing. Every other model is validated as Ultralytics validates it.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from .training import legacy_head, method_wrapper, wrap_methods

_VALIDATOR_MODULE = "ultralytics.models.yolo.detect.val"
_FLAG = "_focus_surgery_yolov5"
YOLOV5_VAL_IOU = 0.6  # val.py's --iou-thres


def has_legacy_head(model: Any) -> bool:
    """True for a ``DetectionModel`` with a ``LegacyDetect`` head, or an ``AutoBackend`` wrapping one."""
    return isinstance(model, nn.Module) and any(
        legacy_head(m) is not None for m in (model, getattr(model, "model", None)) if isinstance(m, nn.Module)
    )


def yolov5_matches(
    pred_classes: torch.Tensor, true_classes: torch.Tensor, iou: torch.Tensor, thresholds: np.ndarray
) -> np.ndarray:
    """YOLOv5's ``process_batch`` matching: per IoU threshold each detection keeps its highest-IoU label, then each
    label its first (most confident) detection (Ultralytics matches greedily by confidence).

    Args:
        pred_classes (torch.Tensor): Predicted classes (N,).
        true_classes (torch.Tensor): Label classes (M,).
        iou (torch.Tensor): IoU of labels (rows) with predictions (columns), (M, N).
        thresholds (np.ndarray): IoU thresholds (T,).

    Returns:
        (np.ndarray): Boolean (N, T), True where the prediction is a true positive at that threshold.
    """
    correct = np.zeros((pred_classes.shape[0], len(thresholds)), dtype=bool)
    correct_class = (true_classes[:, None] == pred_classes).cpu().numpy()
    iou = iou.cpu().numpy()
    for i, threshold in enumerate(thresholds):
        label, det = np.nonzero((iou >= threshold) & correct_class)
        if not len(label):
            continue
        matches = np.stack((label, det, iou[label, det]), 1)
        if len(label) > 1:  # each detection's best-IoU label; then per label the lowest detection index (np.unique)
            matches = matches[matches[:, 2].argsort()[::-1]]
            matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
            matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        correct[matches[:, 1].astype(int), i] = True
    return correct


def yolov5_nms(
    prediction: torch.Tensor, conf_thres: float, iou_thres: float, agnostic: bool = False, max_det: int = 300
) -> list[torch.Tensor]:
    """YOLOv5's multi-label ``non_max_suppression`` (v7.0, no masks) on a ``LegacyDetect`` output: candidates with
    ``obj * cls > conf_thres``, the best 30000 by score, per-class offsets of 7680 px.

    Args:
        prediction (torch.Tensor): (B, 4 + nc, N): xywh boxes, then ``obj * cls`` scores.

    Returns:
        (list[torch.Tensor]): Per image (n, 6): xyxy, score, class; by descending score, at most ``max_det``.
    """
    import torchvision

    nc = prediction.shape[1] - 4
    output = []
    for x in prediction.transpose(-1, -2):
        xy, wh, cls = x[:, :2], x[:, 2:4], x[:, 4:]
        box = torch.cat((xy - wh / 2, xy + wh / 2), 1)  # xywh -> xyxy
        if nc > 1:
            i, j = (cls > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], cls[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = cls.max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        x = x[x[:, 4].argsort(descending=True)[:30000]]  # YOLOv5 sorts before NMS: ties resolve as there
        keep = torchvision.ops.nms(x[:, :4] + x[:, 5:6] * (0 if agnostic else 7680), x[:, 4], iou_thres)
        output.append(x[keep[:max_det]])
    return output


def yolov5_compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """YOLOv5's ``compute_ap``: 101-point interpolated area under the precision envelope, which runs linearly from
    the last recall to recall 1 at precision 0 (Ultralytics drops it to 0 right after the last recall).

    Returns:
        (tuple): AP, the precision envelope and the recall it is sampled at (with sentinels).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    x = np.linspace(0, 1, 101)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(np.interp(x, mrec, mpre), x)), mpre, mrec


def yolov5_load_image(self: Any, i: int, rect_mode: bool = True) -> tuple[np.ndarray, tuple, tuple]:
    """``val.py``'s ``load_image`` as a method of an Ultralytics dataset: long side scaled to ``imgsz`` with the
    sides truncated by ``int()``, INTER_AREA when shrinking (Ultralytics: ``ceil()`` and INTER_LINEAR).

    Returns:
        (tuple): The BGR image (H, W, C), its original (h, w) and its resized (h, w).
    """
    import cv2
    from ultralytics.utils.patches import imread

    if self.ims[i] is not None:
        return self.ims[i], self.im_hw0[i], self.im_hw[i]
    im = imread(self.im_files[i], flags=self.cv2_flag)
    if im is None:
        raise FileNotFoundError(f"Image Not Found {self.im_files[i]}")
    h0, w0 = im.shape[:2]
    r = (max(self.imgsz) if isinstance(self.imgsz, (tuple, list)) else self.imgsz) / max(h0, w0)
    if r != 1:
        interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
        im = cv2.resize(im, (int(w0 * r), int(h0 * r)), interpolation=interp)
    if im.ndim == 2:
        im = im[..., None]
    return im, (h0, w0), im.shape[:2]


def yolov5_ratio_pad(imgsz: Any, ori_shape: Any, ratio_pad: Any) -> tuple:
    """The ``ratio_pad`` with which ``val.py`` maps predictions back to the original image: ``h / h0`` for both axes
    (its ``scale_boxes`` reads ``ratio_pad[0][0]`` only), the padding unrounded (``letterbox``'s ``dw / 2``)."""
    (rh, rw), _ = ratio_pad
    h, w = round(ori_shape[0] * rh), round(ori_shape[1] * rw)
    return (rh, rh), ((int(imgsz[1]) - w) / 2, (int(imgsz[0]) - h) / 2)


@method_wrapper
def _wrap_call(original, self, trainer=None, model=None, **kwargs):
    legacy = has_legacy_head(model) if trainer is None else False  # the model before the dataloader is built
    setattr(self, _FLAG + "_data", legacy)
    if legacy:
        from ultralytics.cfg import DEFAULT_CFG_DICT

        if self.args.iou == DEFAULT_CFG_DICT["iou"]:
            self.args.iou = YOLOV5_VAL_IOU
    return original(self, trainer=trainer, model=model, **kwargs)


@method_wrapper
def _wrap_build_dataset(original, self, img_path, mode="val", batch=None):
    dataset = original(self, img_path, mode=mode, batch=batch)
    if getattr(self, _FLAG + "_data", False):
        dataset.load_image = types.MethodType(yolov5_load_image, dataset)
    return dataset


@method_wrapper
def _wrap_init_metrics(original, self, model):
    setattr(self, _FLAG, has_legacy_head(model))
    return original(self, model)


@method_wrapper
def _wrap_postprocess(original, self, preds):
    if not getattr(self, _FLAG, False):
        return original(self, preds)
    preds = preds[0] if isinstance(preds, (list, tuple)) else preds
    agnostic = self.args.single_cls or self.args.agnostic_nms
    out = yolov5_nms(preds, self.args.conf, self.args.iou, agnostic=agnostic, max_det=self.args.max_det)
    return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in out]


@method_wrapper
def _wrap_process_batch(original, self, preds, batch):
    """Labels and predictions compared in the original image's pixels, clipped to it, as ``val.py`` does (labels
    where the dataset put them, both with the gain ``h / h0``: where ``int()`` truncated the sides unevenly, x is
    stretched, then clipped, which changes the IoU)."""
    if not getattr(self, _FLAG, False) or not len(batch["cls"]) or not len(preds["cls"]):
        return original(self, preds, batch)
    from ultralytics.utils import ops
    from ultralytics.utils.metrics import box_iou

    (rh, _), pad = batch["ratio_pad"]
    native = [
        ops.scale_boxes(batch["imgsz"], b.clone(), batch["ori_shape"], ratio_pad=ratio_pad)
        for b, ratio_pad in (
            (batch["bboxes"], ((rh, rh), pad)),
            (preds["bboxes"], yolov5_ratio_pad(batch["imgsz"], batch["ori_shape"], batch["ratio_pad"])),
        )
    ]
    return {"tp": self.match_predictions(preds["cls"], batch["cls"], box_iou(*native)).cpu().numpy()}


@method_wrapper
def _wrap_get_stats(original, self):
    if not getattr(self, _FLAG, False):
        return original(self)
    from ultralytics.utils import metrics

    ultralytics_ap, metrics.compute_ap = metrics.compute_ap, yolov5_compute_ap  # for this call only
    try:
        return original(self)
    finally:
        metrics.compute_ap = ultralytics_ap


@method_wrapper
def _wrap_match_predictions(original, self, pred_classes, true_classes, iou, *args, **kwargs):
    if not getattr(self, _FLAG, False):
        return original(self, pred_classes, true_classes, iou, *args, **kwargs)
    return torch.from_numpy(yolov5_matches(pred_classes, true_classes, iou, self.iouv.cpu().numpy()))


def install() -> None:
    """Wrap ``DetectionValidator``'s methods once Ultralytics' detection validator module is imported; idempotent."""
    from ..import_hooks import call_when_imported

    wrappers = {
        "init_metrics": _wrap_init_metrics,
        "postprocess": _wrap_postprocess,
        "_process_batch": _wrap_process_batch,
        "get_stats": _wrap_get_stats,
        "match_predictions": _wrap_match_predictions,
        "__call__": _wrap_call,
        "build_dataset": _wrap_build_dataset,
    }
    call_when_imported(
        _VALIDATOR_MODULE, lambda: wrap_methods(sys.modules[_VALIDATOR_MODULE].DetectionValidator, wrappers)
    )
