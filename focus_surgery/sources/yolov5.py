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
from .plain import PlainStateDictSource

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

        if loaded.path.suffix == ".safetensors":  # our tensors + JSON: described as the state dict it is
            return PlainStateDictSource().inspect(loaded)
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

        if loaded.path.suffix == ".safetensors":  # our tensors + JSON: its stem converts as a state dict's
            return PlainStateDictSource().convert(loaded, dst, options)
        if dst.suffix not in OUTPUT_SUFFIXES:
            raise CheckpointError(f"{dst}: unknown output type {dst.suffix!r}; use .pt, .pth or .safetensors")
        if options.to not in ("conv", "focus"):
            raise ValueError(f"{loaded.path}: a YOLOv5 checkpoint converts --to conv or focus, not {options.to}")
        if options.layout == "yolov5":
            return self._convert_in_yolov5_layout(loaded, dst, options)
        if options.layout != "ultralytics":
            raise ValueError(f"--layout {options.layout!r}: use ultralytics or yolov5")
        conv = convert_yolov5(self._checkpoint(loaded), to=options.to, measure=options.verify)
        if conv.verification is not None and not conv.verification.passed:
            raise VerificationFailed(f"{loaded.path}: verification failed ({conv.verification}); {dst} not written")
        written = save_conversion(conv, dst, options.to)
        return {
            "source": self.name,
            "kind": "yolov5",
            "release": conv.release,
            "to": options.to,
            "stem_before": conv.stem_before,
            "stem_after": conv.stem_after,
            "replaced": conv.replaced,
            "dtype": str(conv.ckpt.dtype).replace("torch.", ""),
            "written": [str(p) for p in written],
            "max_abs_err": conv.max_abs_err,
            "max_rel_err": conv.verification.max_rel_err if conv.verification else None,
            "verification": conv.verification.to_dict() if conv.verification else None,
        }

    def _convert_in_yolov5_layout(self, loaded: Loaded, dst: Path, options: ConvertOptions) -> dict[str, Any]:
        """Row 0 converted in the records, written back as the YOLOv5 repository pickles it (v6.0's stem)."""
        from ..verify import verify
        from ..yolov5.rebuild import guess_release, yolov5_checkpoint
        from ..yolov5.records_stem import convert_stem_record
        from .compare import compare_state_dicts
        from .records_io import save_records

        ckpt = self._checkpoint(loaded)
        release = guess_release(ckpt)
        before = ckpt.model.state_dict()
        original = _runnable(ckpt) if options.verify else None
        models = [k for k in ("model", "ema") if isinstance(ckpt.content.get(k), type(ckpt.model))]
        changes = [convert_stem_record(ckpt.content[k], options.to, str(loaded.path)) for k in models]
        report: dict[str, Any] = {
            "source": self.name,
            "kind": "yolov5",
            "layout": "yolov5",
            "release": release,
            "to": options.to,
            "stem_before": changes[0]["from"],
            "stem_after": changes[0]["to"],
            "replaced": changes[0],
            "converted": models,
            "max_abs_err": None,
        }
        if options.verify:
            after = yolov5_checkpoint(ckpt.content, str(loaded.path))
            converted = _runnable(after)
            if original is not None and converted is not None:
                check = verify(original, converted)
                report["verification"] = {**check.to_dict(), "compared": "outputs of the rebuilt models in float64"}
                passed, err = check.passed, check.max_abs_err
            else:  # a head without an Ultralytics counterpart: the weights alone
                check = compare_state_dicts(before, after.model.state_dict(), tolerance=0.0)
                report["verification"] = check
                passed, err = check["passed"], 0.0 if check["passed"] else check["max_abs_err"]
            report["max_abs_err"] = err
            if not passed:
                raise VerificationFailed(f"{loaded.path}: verification failed; {dst} not written")
        if dst.suffix == ".safetensors":
            raise CheckpointError(f"{dst}: --layout yolov5 writes the repository's pickle layout: use .pt")
        if ckpt.metadata.get("yaml_key") == "md":  # v1.0: the reader aliased `md` as `yaml`; write the file as it was
            for key in models:
                ckpt.content[key].state.pop("yaml", None)
        save_records(ckpt.content, dst)
        return report


def _runnable(ckpt) -> nn.Module | None:
    """The rebuilt (Ultralytics) model of a YOLOv5 checkpoint, or None for heads without a counterpart."""
    from ..yolov5.rebuild import rebuild

    try:
        return rebuild(ckpt)[0]
    except CheckpointError:
        return None
