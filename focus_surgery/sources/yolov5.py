"""YOLOv5-repository checkpoints (pickled ``models.yolo.Model``, read as records), and the ``.safetensors`` + JSON
pairs focus-surgery writes for them. Rebuilt as an Ultralytics model (``yolov5/rebuild.py``), converted, measured
against the rebuilt original in float64, written as an Ultralytics checkpoint or ``.safetensors`` + JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint_io import CheckpointError
from .base import ConvertOptions, Source, VerificationFailed
from .loading import Loaded

YOLOV5_MODULES = ("models.yolo.", "models.common.", "models.experimental.")


class Yolov5Source(Source):
    name = "yolov5"
    description = "YOLOv5-repository checkpoint (models.yolo.Model)"

    def claims(self, loaded: Loaded) -> bool:
        from ..yolov5.convert import CONFIG_FORMAT

        if loaded.path.suffix == ".safetensors":
            return loaded.metadata.get("format") == CONFIG_FORMAT
        return loaded.named(*YOLOV5_MODULES)

    def _checkpoint(self, loaded: Loaded):
        from ..yolov5.rebuild import yolov5_checkpoint

        return yolov5_checkpoint(loaded.content, str(loaded.path))

    def model(self, loaded: Loaded) -> nn.Module | None:
        if loaded.path.suffix == ".safetensors":
            from ..yolov5.convert import load_yolov5_safetensors

            return load_yolov5_safetensors(loaded.path)
        from ..yolov5.rebuild import rebuild

        return rebuild(self._checkpoint(loaded))[0]

    def state_dict(self, loaded: Loaded) -> dict:
        if loaded.path.suffix == ".safetensors":
            return dict(loaded.content)
        return self._checkpoint(loaded).model.state_dict()

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        from ..yolov5.rebuild import describe

        if loaded.path.suffix == ".safetensors":
            raise CheckpointError(f"{loaded.path}: a converted YOLOv5 model: inspect its .pt, or load it with "
                                  "focus_surgery.yolov5.convert.load_yolov5_safetensors")  # fmt: skip
        info = describe(self._checkpoint(loaded))
        info["source"] = self.name
        types = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in info["layer_types"].items())
        info["lines"] = [
            f"{info['path']}: YOLOv5-repository checkpoint, most likely release {info['release']}",
            f"  architecture: {info['layers']} layers ({types}); depth {info['depth_multiple']}, "
            f"width {info['width_multiple']}; {info['parameters']:,} parameters",
            f"  stem: {info['stem']}, activation {info['stem_activation']}",
            f"  nc: {info['nc']}  names: {info['names']}",
            f"  anchors (px): {info['anchors']}  strides: {info['stride']}",
            f"  dtype: {info['dtype']}  epoch: {info['epoch']}  best fitness: {info['best_fitness']}",
            f"  converts: {info['converts']}",
        ]
        return info

    def convert(self, loaded: Loaded, dst: Path, options: ConvertOptions) -> dict[str, Any]:
        from ..yolov5.convert import OUTPUT_SUFFIXES, convert_yolov5, save_conversion
        from ..yolov5.rebuild import guess_release

        if loaded.path.suffix == ".safetensors":
            raise CheckpointError(f"{loaded.path}: already converted by focus-surgery; convert the original .pt")
        if dst.suffix not in OUTPUT_SUFFIXES:
            raise CheckpointError(f"{dst}: unknown output type {dst.suffix!r}; use .pt, .pth or .safetensors")
        if options.to not in ("conv", "focus"):
            raise ValueError(f"{loaded.path}: a YOLOv5 checkpoint converts --to conv or focus, not {options.to}")
        conv = convert_yolov5(self._checkpoint(loaded), to=options.to, measure=options.verify)
        if conv.verification is not None and not conv.verification.passed:
            raise VerificationFailed(f"{loaded.path}: verification failed ({conv.verification}); {dst} not written")
        written = save_conversion(conv, dst, options.to)
        return {
            "source": self.name, "kind": "yolov5", "release": guess_release(conv.ckpt), "to": options.to,
            "stem_before": conv.stem_before, "stem_after": conv.stem_after, "replaced": conv.replaced,
            "dtype": str(conv.ckpt.dtype).replace("torch.", ""), "written": [str(p) for p in written],
            "max_abs_err": conv.max_abs_err,
            "max_rel_err": conv.verification.max_rel_err if conv.verification else None,
            "verification": conv.verification.to_dict() if conv.verification else None,
        }  # fmt: skip
