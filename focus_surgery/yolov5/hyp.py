"""YOLOv5's training hyper-parameters: defaults per release and their mapping onto Ultralytics' training arguments.

A converted checkpoint carries them in its model YAML under ``yolov5_hyp``, which Ultralytics' trainer rebuilds the
model from and every checkpoint it writes holds: they survive training, ``resume=True`` and conversion.
"""

from __future__ import annotations

from typing import Any, Mapping

from .loss_rules import scale_gains  # noqa: F401  (train.py's scaling of these gains, per release)

HYP_KEY = "yolov5_hyp"  # top-level model-YAML key
RELEASE_KEY = "yolov5_release"  # the release a converted checkpoint was written by (as guessed), for the loss

# data/hyp.scratch.yaml of v5.0 (v3.0-v5.0 differ only in lrf / augmentation defaults we do not rely on)
HYP_SCRATCH_V5 = {
    **dict(lr0=0.01, lrf=0.2, momentum=0.937, weight_decay=0.0005),  # optimizer
    **dict(warmup_epochs=3.0, warmup_momentum=0.8, warmup_bias_lr=0.1),
    **dict(box=0.05, cls=0.5, cls_pw=1.0, obj=1.0, obj_pw=1.0, iou_t=0.20),  # loss
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    **dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, degrees=0.0, translate=0.1, scale=0.5, shear=0.0),  # augmentation
    **dict(perspective=0.0, flipud=0.0, fliplr=0.5, mosaic=1.0, mixup=0.0),
}
# data/hyps/hyp.scratch-low.yaml of v6.0-v7.0 (the default of train.py there)
HYP_SCRATCH_LOW_V7 = {**HYP_SCRATCH_V5, "lrf": 0.01, "copy_paste": 0.0}
AUTOANCHOR_DEFAULT = 1.0  # train.py's --noautoanchor flag, kept with the hyp (1: check anchors, 0: do not)
# The loss reads these; every other key is a training argument.
LOSS_KEYS = ("box", "obj", "cls", "cls_pw", "obj_pw", "anchor_t", "fl_gamma", "label_smoothing")
# YOLOv5 hyp -> Ultralytics argument of the same meaning (YOLOv5's box/cls gains weigh a different loss, and its
# cls_pw is a BCE positive weight, not a class-weight power: those are not mapped).
ULTRALYTICS_ARGS = (
    *("lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr"),
    *("hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective"),
    *("flipud", "fliplr", "mosaic", "mixup", "copy_paste"),
)


def base_hyp(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """YOLOv5's defaults (v7.0 ``hyp.scratch-low``) updated with the numbers of ``stored``; v1.0-v2.0's ``giou`` is
    ``box``."""
    hyp = {**HYP_SCRATCH_LOW_V7, "label_smoothing": 0.0, "autoanchor": AUTOANCHOR_DEFAULT}
    for key, value in dict(stored or {}).items():
        if isinstance(value, (int, float)):  # bool counts as 0/1 (autoanchor); skips e.g. v2.0's 'optimizer': 'SGD'
            hyp["box" if key == "giou" else key] = float(value)
    return hyp


def recorded_release(model: Any) -> Any:
    """The release an Ultralytics model records (``model.yaml["yolov5_release"]``), or None (a YAML model)."""
    yaml = getattr(model, "yaml", None)
    return yaml.get(RELEASE_KEY) if isinstance(yaml, dict) else None


def checkpoint_hyp(content: Mapping[str, Any], model_hyp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The unscaled hyp of a YOLOv5 checkpoint: ``opt['hyp']`` (v6.0+ save it before scaling) else ``model.hyp``
    (v3.0-v5.0 scaled it for the run's ``nc`` and image size: the identity for COCO, else taken as given)."""
    opt = content.get("opt")
    if isinstance(opt, Mapping) and isinstance(opt.get("hyp"), Mapping):
        return dict(opt["hyp"])
    return dict(model_hyp) if isinstance(model_hyp, Mapping) else None


def apply_to_args(args: Any, hyp: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Set the Ultralytics training arguments that still hold Ultralytics' default to YOLOv5's value.

    Returns:
        (list[str]): The argument names changed (a value the user set is kept).
    """
    changed = []
    for key in ULTRALYTICS_ARGS:
        default = defaults.get(key)
        if key in hyp and hasattr(args, key) and getattr(args, key) == default and hyp[key] != default:
            setattr(args, key, type(default)(hyp[key]) if isinstance(default, float) else hyp[key])
            changed.append(key)
    return changed
