"""YOLOX / DAMO-YOLO trainer files (``{"start_epoch", "model", "optimizer", ...}``) whose stem ``Focus(3, C, ksize=3)``
converts like any nested state dict; the result loads into a model whose stem is ``BaseConv(3, C, 6, 2)``."""

from __future__ import annotations

from typing import Any

from ..report import bounded
from .loading import Loaded
from .plain import PlainStateDictSource, tensors

FAMILY_GEOMETRY = (2, "yolov5")  # YOLOX's Focus: YOLOv5's four slices
TRAINER_KEYS = {"start_epoch", "model", "optimizer"}
MODEL_CHANGE = (
    "in yolox/models/darknet.py, CSPDarknet.__init__: self.stem = BaseConv(3, base_channels, ksize=6, "
    "stride=2, act=act) instead of Focus(3, base_channels, ksize=3, act=act)"
)


class YoloxSource(PlainStateDictSource):
    name = "yolox"
    description = "YOLOX / DAMO-YOLO trainer checkpoint (state dict under 'model')"
    specificity = 10  # a plain state dict with the trainer's keys

    def claims(self, loaded: Loaded) -> bool:
        content = loaded.content
        if not (super().claims(loaded) and TRAINER_KEYS <= set(content) and isinstance(content["model"], dict)):
            return False
        return any(k.startswith(("backbone.backbone.stem.", "backbone.stem.")) for k in tensors(content["model"]))

    def geometry_from_file(self, loaded: Loaded, options) -> bool:
        return (options.block_size, options.order) == FAMILY_GEOMETRY  # the trainer's keys name the family

    def inspect(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict[str, Any]:
        result = super().inspect(loaded, block_size, order)
        result["lines"][0] = f"{loaded.path}: {self.description}, epoch {bounded(loaded.content.get('start_epoch'))}"
        result["after_conversion"] = MODEL_CHANGE
        return result

    def convert(self, loaded, options):
        report = super().convert(loaded, options)
        if options.to == "conv":
            report.loads_into = MODEL_CHANGE
        return report
