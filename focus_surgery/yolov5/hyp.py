"""YOLOv5's training hyper-parameters: defaults per release, the scaling its ``train.py`` applies, and the mapping
onto Ultralytics' training arguments.

A converted checkpoint (or a YAML with a ``LegacyDetect`` row) carries its YOLOv5 hyper-parameters in the model YAML
under ``yolov5_hyp``: the YAML is what Ultralytics' trainer rebuilds the model from and what every checkpoint it
writes holds, so the values survive training, ``resume=True`` and conversion.
"""

from __future__ import annotations

from typing import Any, Mapping

HYP_KEY = "yolov5_hyp"  # top-level model-YAML key
RELEASE_KEY = "yolov5_release"  # the release a converted checkpoint was written by (as guessed), for the loss

# data/hyp.scratch.yaml of v5.0 (v3.0-v5.0 differ only in lrf / augmentation defaults we do not rely on)
HYP_SCRATCH_V5 = {
    "lr0": 0.01,
    "lrf": 0.2,
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.1,
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 0.20,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
}
# data/hyps/hyp.scratch-low.yaml of v6.0-v7.0 (the default of train.py there)
HYP_SCRATCH_LOW_V7 = {**HYP_SCRATCH_V5, "lrf": 0.01, "copy_paste": 0.0}
# Not a YOLOv5 hyp: its train.py --noautoanchor flag, kept with the hyp here (1: check anchors, 0: do not)
AUTOANCHOR_DEFAULT = 1.0

# The loss reads these; every other key is a training argument.
LOSS_KEYS = ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t", "fl_gamma", "label_smoothing")

# YOLOv5 hyp -> Ultralytics argument with the same meaning (YOLOv5's box/cls gains weigh a different loss than
# Ultralytics' box/cls, and its cls_pw is a BCE positive weight, not a class-weight power: those are not mapped).
ULTRALYTICS_ARGS = (
    "lr0",
    "lrf",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_momentum",
    "warmup_bias_lr",
    "hsv_h",
    "hsv_s",
    "hsv_v",
    "degrees",
    "translate",
    "scale",
    "shear",
    "perspective",
    "flipud",
    "fliplr",
    "mosaic",
    "mixup",
    "copy_paste",
)


def base_hyp(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """YOLOv5's defaults (v7.0 ``hyp.scratch-low``) updated with ``stored``; v1.0-v2.0's ``giou`` is ``box``."""
    hyp = dict(HYP_SCRATCH_LOW_V7)
    hyp["label_smoothing"] = 0.0
    hyp["autoanchor"] = AUTOANCHOR_DEFAULT
    for key, value in dict(stored or {}).items():
        if not isinstance(value, (int, float)):  # bool counts as 0/1 (autoanchor)
            continue  # e.g. v2.0's 'optimizer': 'SGD'
        hyp["box" if key == "giou" else key] = float(value)
    return hyp


def scale_gains(hyp: Mapping[str, Any], nl: int, nc: int, imgsz: int, release: str | None = None) -> dict[str, Any]:
    """The loss gains as the release's ``train.py`` scales them before training (``loss_rules.scale_gains``;
    v5.0-v7.0: ``box *= 3 / nl``, ``cls *= nc / 80 * 3 / nl``, ``obj *= (imgsz / 640) ** 2 * 3 / nl``)."""
    from .loss_rules import scale_gains as release_scale_gains

    return release_scale_gains(hyp, nl, nc, imgsz, release)


def checkpoint_hyp(content: Mapping[str, Any], model_hyp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The unscaled hyp of a YOLOv5 checkpoint: ``opt['hyp']`` (v6.0+ save it before scaling) else ``model.hyp``.

    ``model.hyp`` of v3.0-v5.0 files is the dict ``train.py`` scaled for that run's ``nc`` and image size; for the
    COCO set-up (80 classes, 640 px, 3 levels) the scaling is the identity, otherwise it is taken as given.
    """
    opt = content.get("opt")
    if isinstance(opt, Mapping) and isinstance(opt.get("hyp"), Mapping):
        return dict(opt["hyp"])
    return dict(model_hyp) if isinstance(model_hyp, Mapping) else None


def apply_to_args(args: Any, hyp: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Set Ultralytics training arguments that still hold Ultralytics' default to YOLOv5's value.

    An argument the user set to something other than Ultralytics' default keeps the user's value.

    Returns:
        (list[str]): The argument names changed.
    """
    changed = []
    for key in ULTRALYTICS_ARGS:
        default = defaults.get(key)
        if key in hyp and hasattr(args, key) and getattr(args, key) == default and hyp[key] != default:
            setattr(args, key, type(defaults[key])(hyp[key]) if isinstance(defaults[key], float) else hyp[key])
            changed.append(key)
    return changed
