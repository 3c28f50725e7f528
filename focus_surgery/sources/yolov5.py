"""YOLOv5-repository checkpoints (pickled ``models.yolo.Model``, read as records), and the ``.safetensors`` + JSON
pairs focus-surgery writes for them: rebuilt as an Ultralytics model (``yolov5/rebuild.py``), converted, measured
against the rebuilt original in float64; written as an Ultralytics checkpoint, or in the repository's own layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint_io import CheckpointError
from ..loader import Record
from ..report import ConvertReport
from .base import CHECKPOINTS, PICKLES, ConvertOptions, Source
from .copies import refuse_unconverted, weight_permutation
from .leftover import leftover
from .loading import Loaded
from .plain import PlainStateDictSource, remap_optimizer_state

YOLOV5_MODULES = ("models.yolo.", "models.common.", "models.experimental.")


class Yolov5PairSource(PlainStateDictSource):
    """The ``.safetensors`` + JSON pair focus-surgery writes for a YOLOv5 file: its stem converts as a state dict's;
    ``verify`` runs the model the JSON describes. A pair whose halves come from two conversions is refused."""

    name = "yolov5-safetensors"
    description = "YOLOv5 model as .safetensors + JSON written by focus-surgery"
    specificity = 20  # a state dict whose header names our format

    def claims(self, loaded: Loaded) -> bool:
        if loaded.path.suffix != ".safetensors":  # asked of every file: YOLOv5's modules (and Ultralytics) not imported
            return False
        from ..yolov5.pair_format import CONFIG_FORMAT  # nothing else: a plain .safetensors is asked too

        return loaded.metadata.get("format") == CONFIG_FORMAT

    def model(self, loaded: Loaded) -> nn.Module | None:
        from ..yolov5.convert import load_yolov5_safetensors

        return load_yolov5_safetensors(loaded.path)

    def state_dict(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict:
        return dict(loaded.content)

    def inspect(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict[str, Any]:
        _check_pair(loaded)
        return super().inspect(loaded, block_size, order)

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        _check_pair(loaded)
        return super().convert(loaded, options)


def _check_pair(loaded: Loaded) -> None:
    from ..yolov5.convert import check_pair_digest

    check_pair_digest(loaded.path, dict(loaded.content), loaded.metadata.get("tensors_sha256"))


class Yolov5Source(Source):
    name = "yolov5"
    description = "YOLOv5-repository checkpoint (models.yolo.Model)"
    specificity = 10  # names classes of models.yolo / models.common
    targets = ("conv", "focus")
    outputs = {"ultralytics": CHECKPOINTS, "yolov5": PICKLES}

    def claims(self, loaded: Loaded) -> bool:
        return loaded.path.suffix != ".safetensors" and loaded.named(*YOLOV5_MODULES)

    def _checkpoint(self, loaded: Loaded):
        from ..yolov5.rebuild import yolov5_checkpoint

        return yolov5_checkpoint(loaded.content, str(loaded.path))

    def model(self, loaded: Loaded) -> nn.Module | None:
        """The rebuilt model, a fork's head with extra outputs per anchor included (its raw logits: the proof and
        ``verify`` compare outputs, as the conversion's own check does with ``_runnable``)."""
        from ..yolov5.rebuild import rebuild

        return rebuild(self._checkpoint(loaded), extra_outputs=True)[0]

    def state_dict(self, loaded: Loaded) -> dict:
        return self._checkpoint(loaded).model.state_dict()

    def stems(self, loaded: Loaded, options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """Row 0 of each recorded model as it computes (for heads no rebuild runs): the Focus (YOLOv5's slices,
        then its inner ``Conv`` block) or the 6x6 stride-2 ``Conv`` block that replaces it."""
        from .compare import recorded_stem

        found = []
        content = self._checkpoint(loaded).content
        for key in ("model", "ema"):
            model = content.get(key)
            if not isinstance(model, Record) or "model" not in model.children():
                continue
            row = model.children()["model"].state["_modules"]["0"]
            if row.qualname.endswith(".Focus"):
                found.append((key, *recorded_stem(row.children()["conv"], 2, "yolov5")))
            elif "conv" in row.children() and tuple(row.children()["conv"].get("stride")) == (2, 2):
                found.append((key, *recorded_stem(row)))
        return found

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        from ..yolov5.rebuild import describe

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

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        from ..yolov5.convert import convert_yolov5, save_conversion
        from ..yolov5.rebuild import NoUltralyticsCounterpart

        ckpt = self._checkpoint(loaded)
        if options.layout == "yolov5":
            return self._convert_in_yolov5_layout(loaded, options, ckpt)
        try:
            conv = convert_yolov5(ckpt, to=options.to, measure=options.verify)
        except NoUltralyticsCounterpart as why:
            if options.layout is not None:  # --layout ultralytics asked for explicitly
                raise
            return self._convert_in_yolov5_layout(loaded, options, ckpt, why.reason)
        check = conv.verification
        fields = {"kind": "yolov5", "release": conv.release, "stem_before": conv.stem_before}
        fields.update(stem_after=conv.stem_after, replaced=conv.replaced)
        fields["dtype"] = str(conv.ckpt.dtype).replace("torch.", "")
        fields.update(max_rel_err=check.max_rel_err if check else None, verification=check.to_dict() if check else None)
        change = f"{conv.stem_before} -> {conv.stem_after}"
        report = ConvertReport(str(loaded.path), self.name, options.to, change=change, fields=fields)
        report.max_abs_err = conv.max_abs_err
        report.problem = str(check) if check is not None and not check.passed else None
        left, report.details = leftover(conv.model, options.to, "all", "--layout yolov5 writes the YOLOv5 layout")
        fields.update(left)
        report.write = lambda dst: save_conversion(conv, dst, options.to)
        return report

    def _convert_in_yolov5_layout(
        self, loaded: Loaded, options: ConvertOptions, ckpt: Any, why: str = ""
    ) -> ConvertReport:
        """Row 0 converted in the records, written back as the YOLOv5 repository pickles it (v6.0's stem).

        ``why``: the reason an Ultralytics model cannot hold this one, when this layout was chosen by default.
        """
        from ..verify import verify
        from ..yolov5.rebuild import guess_release, yolov5_checkpoint
        from ..yolov5.records_stem import convert_stem_record, stem_already
        from .compare import check_stem

        report = ConvertReport(str(loaded.path), self.name, options.to, fields={"kind": "yolov5", "layout": "yolov5"})
        report.nothing_to_do = stem_already(ckpt.model, options.to)
        if report.nothing_to_do:  # the file already is what was asked: nothing written
            return report
        before = ckpt.model.state_dict()
        original = _runnable(ckpt) if options.verify else None
        models = [k for k in ("model", "ema") if isinstance(ckpt.content.get(k), type(ckpt.model))]
        changes = [convert_stem_record(ckpt.content[k], options.to, str(loaded.path)) for k in models]
        fields = report.fields
        fields.update(release=guess_release(ckpt), stem_before=changes[0]["from"], stem_after=changes[0]["to"])
        fields.update(replaced=changes[0], converted=models)
        report.change = f"{changes[0]['from']} -> {changes[0]['to']}"
        old, new = changes[0]["weight"]
        if isinstance(ckpt.content.get("optimizer"), dict):  # a last.pt's momentum for the stem weight follows it
            remap = weight_permutation(old, new, 2, "yolov5")
            fields["optimizer"] = remap_optimizer_state(ckpt.content["optimizer"], old, remap)
        refuse_unconverted(ckpt.content, old, [ckpt.content[k] for k in models])
        if why:
            fields["layout_reason"] = why
            report.details.append(
                f"  written in the YOLOv5 repository's own layout (--layout yolov5), not as an Ultralytics model: "
                f"{why}; only the stem changed, every other layer is kept as the file had it"
            )
        if options.verify:
            after = yolov5_checkpoint(ckpt.content, str(loaded.path))  # as the written file will be read
            converted = _runnable(after)
            if original is not None and converted is not None:
                check = verify(original, converted)
                fields["verification"] = {**check.to_dict(), "compared": "outputs of the rebuilt models in float64"}
                passed, err, problem = check.passed, check.max_abs_err, str(check)
            else:  # layers without an Ultralytics counterpart: the stem run in float64, every other tensor bit for bit
                check = check_stem(before, after.model.state_dict())
                passed, problem, stem, rest = check["passed"], check["problem"], check["stem"], check["tensors"]
                err = rest["max_abs_err"] if stem["passed"] and not passed else stem["max_abs_err"]
                # the keys this check had before the stem was run too: `tensors` a count, `max_abs_err`
                check.update(tensors=rest["tensors"], max_abs_err=err, state_dicts=rest)
                fields["verification"] = check
            report.max_abs_err, report.problem = err, None if passed else problem
        if ckpt.metadata.get("yaml_key") == "md":  # v1.0: the reader aliased `md` as `yaml`; write the file as it was
            for key in models:
                ckpt.content[key].state.pop("yaml", None)
        report.write = lambda dst: _save_pickle(ckpt.content, dst, why, loaded)
        return report


def _save_pickle(content: dict, dst: Any, why: str, like: Loaded | None = None) -> Any:
    """The records written back as the YOLOv5 repository pickles them, in the input's container, protocol and
    globals; a pickle only (a fallback from the default layout may have been asked for a ``.safetensors``)."""
    from . import records_io

    if Path(dst).suffix.lower() not in PICKLES:
        raise CheckpointError(
            f"{dst}: this model is written in the YOLOv5 repository's own layout "
            f"({why or 'asked with --layout yolov5'}), a pickle: use {' or '.join(PICKLES)}"
        )
    return records_io.save_records(content, dst, like)


def _runnable(ckpt) -> nn.Module | None:
    """The rebuilt (Ultralytics) model of a YOLOv5 checkpoint (a fork's head returns its raw logits), or None for
    layers and heads without a counterpart."""
    from ..yolov5.rebuild import rebuild

    try:
        return rebuild(ckpt, extra_outputs=True)[0]
    except CheckpointError:
        return None
