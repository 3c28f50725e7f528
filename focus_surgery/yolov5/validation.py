"""Validating ``LegacyDetect`` models with Ultralytics' validator and YOLOv5's own ``val.py`` rules.

Nothing installed is edited; ``install_validator()`` (run once Ultralytics' detection validator module is imported)
wraps, in memory, five methods of ``DetectionValidator``:

* ``init_metrics``: notes whether the validated model has a ``LegacyDetect`` head;
* ``postprocess``: for such a model, YOLOv5's ``non_max_suppression`` as ``val.py`` calls it (multi-label, candidates
  with ``obj * cls > conf``, sorted by confidence before torchvision's NMS, per-class offsets of 7680 px, at most
  30000 boxes in and ``max_det`` out). The sort matters when scores tie (flat image regions, letterbox padding):
  NMS then keeps the same one of the tied boxes as YOLOv5;
* ``_process_batch``: for such a model, predictions and labels are compared in the original image's pixels,
  predictions clipped to the image, as ``val.py`` does (Ultralytics compares them in the letterboxed image, unclipped,
  so a box reaching into the padding scores a different IoU);
* ``match_predictions``: for such a model, predictions are matched to labels as YOLOv5's ``process_batch`` does (per
  IoU threshold: each detection keeps its highest-IoU label, then each label its first detection, i.e. the most
  confident), not greedily by confidence over the still unclaimed labels as Ultralytics does;
* ``get_stats``: for such a model, average precision as YOLOv5's ``compute_ap`` (the precision envelope interpolated
  linearly from the last recall to recall 1 at precision 0; Ultralytics drops it to 0 right after the last recall).
  ``ultralytics.utils.metrics.compute_ap`` is swapped for the duration of that call only.

And YOLOv5's preprocessing (``val.py``'s dataloader) for such a model validated on its own (``model.val()``):

* ``__call__``: notes the model before the dataloader is built and, where the IoU threshold is Ultralytics' default
  (0.7), uses ``val.py``'s 0.6;
* ``build_dataset``: images are resized as ``val.py``'s ``load_image`` does (``int()`` of the scaled sides, INTER_AREA
  when shrinking; Ultralytics: ``ceil()`` and INTER_LINEAR); rect batches and letterboxing are already the same;
* ``_process_batch`` (above): predictions are mapped back with ``val.py``'s unrounded padding (half a pixel where the
  padding is odd; the image itself sits at the rounded offset in both), and labels and predictions both with
  ``val.py``'s single gain ``h / h0`` (its ``scale_boxes`` reads ``ratio_pad[0][0]`` for both axes; where ``int()``
  truncated the sides unevenly, x is stretched by ``(h / h0) / (w / w0)`` before both are clipped to the image).

Every other model gets Ultralytics' own NMS, matching and preprocessing, unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from typing import Any

import numpy as np
import torch
from torch import nn

from .training import WRAPPED_MARK, legacy_head, wrap_methods

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
    """YOLOv5's ``process_batch`` matching.

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
    prediction: torch.Tensor,
    conf_thres: float,
    iou_thres: float,
    agnostic: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[torch.Tensor]:
    """YOLOv5's multi-label ``non_max_suppression`` (v7.0, no masks) on a ``LegacyDetect`` output.

    Args:
        prediction (torch.Tensor): (B, 4 + nc, N): xywh boxes, then ``obj * cls`` scores.
        conf_thres (float): Score threshold.
        iou_thres (float): NMS IoU threshold.
        agnostic (bool): One NMS over all classes.
        max_det (int): Detections kept per image.
        max_nms (int): Candidates passed to NMS per image (the best by score).
        max_wh (int): Per-class box offset in pixels.

    Returns:
        (list[torch.Tensor]): Per image (n, 6): xyxy, score, class; by descending score.
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
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]  # YOLOv5 sorts before NMS: ties resolve as there
        keep = torchvision.ops.nms(x[:, :4] + x[:, 5:6] * (0 if agnostic else max_wh), x[:, 4], iou_thres)
        output.append(x[keep[:max_det]])
    return output


def yolov5_compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """YOLOv5's ``compute_ap``: 101-point interpolated area under the precision envelope.

    Returns:
        (tuple): AP, the precision envelope and the recall it is sampled at (with sentinels).
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(np.concatenate(([1.0], precision, [0.0])))))
    x = np.linspace(0, 1, 101)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(trapezoid(np.interp(x, mrec, mpre), x)), mpre, mrec


@contextlib.contextmanager
def _yolov5_average_precision():
    from ultralytics.utils import metrics

    original = metrics.compute_ap
    metrics.compute_ap = yolov5_compute_ap
    try:
        yield
    finally:
        metrics.compute_ap = original


def yolov5_load_image(self: Any, i: int, rect_mode: bool = True) -> tuple[np.ndarray, tuple, tuple]:
    """``val.py``'s ``load_image`` as a method of an Ultralytics dataset: long side scaled to ``imgsz`` with the
    sides truncated by ``int()``, INTER_AREA when shrinking (INTER_LINEAR when enlarging or augmenting).

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
    """The ``ratio_pad`` with which ``val.py`` maps predictions back to the original image, for Ultralytics'
    ``scale_boxes``: ``h / h0`` for both axes (``val.py``'s ``scale_boxes`` reads ``gain = ratio_pad[0][0]`` only),
    the padding unrounded (``letterbox``'s ``dw / 2``)."""
    (rh, rw), _ = ratio_pad
    h, w = round(ori_shape[0] * rh), round(ori_shape[1] * rw)
    return (rh, rh), ((int(imgsz[1]) - w) / 2, (int(imgsz[0]) - h) / 2)


def yolov5_label_ratio_pad(ratio_pad: Any) -> tuple:
    """The ``ratio_pad`` with which ``val.py`` maps labels back: the dataset's padding (where its labels sit), ``h /
    h0`` for both axes as for predictions. Where ``int()`` truncated the resized sides unevenly, ``w / w0 != h / h0``
    and ``val.py``'s boxes are stretched along x, then clipped to the image: the clipping changes their IoU."""
    (rh, _), pad = ratio_pad
    return (rh, rh), pad


def _wrap_call(original):
    @functools.wraps(original)
    def __call__(self, trainer=None, model=None, **kwargs):
        legacy = has_legacy_head(model) if trainer is None else False
        setattr(self, _FLAG + "_data", legacy)
        if legacy:
            from ultralytics.cfg import DEFAULT_CFG_DICT

            if self.args.iou == DEFAULT_CFG_DICT["iou"]:
                self.args.iou = YOLOV5_VAL_IOU
        return original(self, trainer=trainer, model=model, **kwargs)

    setattr(__call__, WRAPPED_MARK, original)
    return __call__


def _wrap_build_dataset(original):
    @functools.wraps(original)
    def build_dataset(self, img_path, mode="val", batch=None):
        dataset = original(self, img_path, mode=mode, batch=batch)
        if getattr(self, _FLAG + "_data", False):
            dataset.load_image = types.MethodType(yolov5_load_image, dataset)
        return dataset

    setattr(build_dataset, WRAPPED_MARK, original)
    return build_dataset


def _wrap_init_metrics(original):
    @functools.wraps(original)
    def init_metrics(self, model):
        setattr(self, _FLAG, has_legacy_head(model))
        return original(self, model)

    setattr(init_metrics, WRAPPED_MARK, original)
    return init_metrics


def _wrap_postprocess(original):
    @functools.wraps(original)
    def postprocess(self, preds):
        if not getattr(self, _FLAG, False):
            return original(self, preds)
        preds = preds[0] if isinstance(preds, (list, tuple)) else preds
        out = yolov5_nms(
            preds,
            self.args.conf,
            self.args.iou,
            agnostic=self.args.single_cls or self.args.agnostic_nms,
            max_det=self.args.max_det,
        )
        return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in out]

    setattr(postprocess, WRAPPED_MARK, original)
    return postprocess


def _wrap_process_batch(original):
    @functools.wraps(original)
    def _process_batch(self, preds, batch):
        if not getattr(self, _FLAG, False) or not len(batch["cls"]) or not len(preds["cls"]):
            return original(self, preds, batch)
        from ultralytics.utils import ops
        from ultralytics.utils.metrics import box_iou

        native = [
            ops.scale_boxes(batch["imgsz"], b.clone(), batch["ori_shape"], ratio_pad=ratio_pad)
            for b, ratio_pad in (
                (batch["bboxes"], yolov5_label_ratio_pad(batch["ratio_pad"])),  # labels: where the dataset put them
                (preds["bboxes"], yolov5_ratio_pad(batch["imgsz"], batch["ori_shape"], batch["ratio_pad"])),
            )
        ]
        return {"tp": self.match_predictions(preds["cls"], batch["cls"], box_iou(*native)).cpu().numpy()}

    setattr(_process_batch, WRAPPED_MARK, original)
    return _process_batch


def _wrap_get_stats(original):
    @functools.wraps(original)
    def get_stats(self):
        if not getattr(self, _FLAG, False):
            return original(self)
        with _yolov5_average_precision():
            return original(self)

    setattr(get_stats, WRAPPED_MARK, original)
    return get_stats


def _wrap_match_predictions(original):
    @functools.wraps(original)
    def match_predictions(self, pred_classes, true_classes, iou, *args, **kwargs):
        if not getattr(self, _FLAG, False):
            return original(self, pred_classes, true_classes, iou, *args, **kwargs)
        return torch.from_numpy(yolov5_matches(pred_classes, true_classes, iou, self.iouv.cpu().numpy()))

    setattr(match_predictions, WRAPPED_MARK, original)
    return match_predictions


def install_validator(val_module: Any) -> None:
    """Wrap ``val_module.DetectionValidator``'s ``init_metrics``, ``postprocess``, ``_process_batch``,
    ``match_predictions``, ``get_stats``, ``__call__`` and ``build_dataset``; idempotent."""
    wrap_methods(
        val_module.DetectionValidator,
        {
            "init_metrics": _wrap_init_metrics,
            "postprocess": _wrap_postprocess,
            "_process_batch": _wrap_process_batch,
            "get_stats": _wrap_get_stats,
            "match_predictions": _wrap_match_predictions,
            "__call__": _wrap_call,
            "build_dataset": _wrap_build_dataset,
        },
    )


def install() -> None:
    """Install the validator hooks once Ultralytics' detection validator module is imported."""
    from ..import_hooks import call_when_imported

    call_when_imported(_VALIDATOR_MODULE, lambda: install_validator(sys.modules[_VALIDATOR_MODULE]))
