"""Checkpoints holding model objects of installed classes (Ultralytics, torch, timm, focus-surgery) under ``model`` /
``ema``: converted with ``surgery.convert`` in place, so wrapper, metadata, optimizer and dtype are written back."""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from ..checkpoint_io import MODULE_PREFIXES, CheckpointError, save_checkpoint
from ..loader import Record
from ..loader.plain import to_plain
from ..errors import ConversionError, VerificationFailed
from ..report import ConvertReport
from ..surgery import convert, iter_stems
from .base import CHECKPOINTS, PICKLES, ConvertOptions, Source
from .copies import refuse_unconverted, weight_permutation
from .leftover import leftover
from .loading import Loaded

ULTRALYTICS = "ultralytics.nn.tasks."
ALREADY = "already a current Ultralytics model"


class TorchModelSource(Source):
    name = "ultralytics"
    description = "checkpoint with a model object of installed classes (Ultralytics, torch, timm, focus-surgery)"
    specificity = 10  # model objects, every class named of an installed layer package
    targets = ("conv", "focus", "s2d", "fastest")
    scopes = ("stem", "all")
    outputs = {"ultralytics": CHECKPOINTS, "yolov5": PICKLES}  # yolov5: a YOLOv5-architecture model written back

    def claims(self, loaded: Loaded) -> bool:
        content = loaded.content
        holds_model = isinstance(content, dict) and any(isinstance(content.get(k), Record) for k in ("model", "ema"))
        return holds_model and all(n.startswith(MODULE_PREFIXES) for n in loaded.names)

    def _models(self, loaded: Loaded) -> dict[str, nn.Module]:
        content = loaded.checkpoint().content
        return {k: content[k] for k in ("model", "ema") if isinstance(content.get(k), nn.Module)}

    def model(self, loaded: Loaded) -> nn.Module | None:
        models = self._models(loaded)
        model = models.get("ema") or models.get("model")
        return model.float().eval() if model is not None else None

    def state_dict(self, loaded: Loaded) -> dict:
        model = self.model(loaded)
        return dict(model.state_dict()) if model is not None else {}

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        ckpt = loaded.checkpoint()
        model = ckpt.model
        params = list(model.parameters())
        result: dict[str, Any] = {"path": str(loaded.path), "kind": ckpt.kind, "source": self.name}
        result.update(model=type(model).__name__, parameters=sum(p.numel() for p in params))
        result["dtype"] = str(params[0].dtype).replace("torch.", "") if params else None
        result["stems"] = list(iter_stems(model))
        yaml = getattr(model, "yaml", None)
        if isinstance(yaml, dict) and "nc" in yaml:
            result["nc"] = yaml["nc"]
        for key in ("nc", "names", "stride"):
            if hasattr(model, key):
                try:
                    result[key] = to_plain(getattr(model, key))  # bounded: values from the file
                except CheckpointError as error:
                    raise CheckpointError(f"{loaded.path}: model.{key}: {error}") from None
        lines = [f"{result['path']}: {result['kind']} {result['model']}"]
        lines += [f"  {key}: {result[key]}" for key in ("parameters", "dtype", "nc", "names") if key in result]
        for stem in result["stems"]:
            to = stem["direction"]
            if "skipped" in stem:
                lines.append(f"  stem {stem['path']}: cannot convert to {to}: {stem['skipped']}")
                continue
            note = "; already converted (a strided conv, as convert --to conv writes it) or a conv stem by birth"
            forms = f"{stem['old_form']} -> {stem['new_form']}"
            lines.append(f"  stem {stem['path']}: {forms} (convert --to {to})" + (note if to == "focus" else ""))
        if not result["stems"]:
            lines.append("  no Focus / space-to-depth / strided-conv stem found")
        result["lines"] = lines
        return result

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        if options.layout == "yolov5":
            from .yolov5_layout import convert_to_yolov5_layout

            return convert_to_yolov5_layout(loaded, options, self.name)
        ultralytics = loaded.named(ULTRALYTICS)
        ckpt = loaded.checkpoint()
        models = self._models(loaded)
        content = ckpt.content  # the loaded objects are ours alone: converting them in place is safe
        report = ConvertReport(str(loaded.path), self.name, options.to, options.scope)
        try:
            if options.to == "fastest":
                from ..speed.optimize import fastest_model_checkpoint

                first_model = next(iter(models.values()))
                shapes = Counter(tuple(p.shape) for p in first_model.parameters())
                content, fast = fastest_model_checkpoint(content, options.batch, options.input_size, options.verify)
                if isinstance(content.get("optimizer"), dict):  # a form change the optimizer state cannot follow
                    for shape in shapes - Counter(tuple(p.shape) for p in first_model.parameters()):
                        refuse_unconverted(content["optimizer"], shape)
                fields = {"chosen": fast.stems[0].chosen, **fast.to_dict()}
                report.change, report.max_abs_err = f"stem to fastest here: {fields['chosen']}", fast.max_abs_err
            else:
                reports = [convert(m, options.to, options.scope, options.verify) for m in models.values()]
                first = reports[0]  # every model (and its EMA) converted; the first one reported
                already = _already(models, options) if not first.replaced and not first.skipped else None
                if already is not None:
                    report.nothing_to_do, report.note = already, ALREADY if ultralytics else ""
                    return report
                if not first.replaced:
                    reason = "; ".join(f"{s.path}: {s.reason}" for s in first.skipped) or "no stem to convert"
                    note = f"{ALREADY}, and its stem does not convert to {options.to} " if ultralytics else ""
                    raise ConversionError(f"{loaded.path}: {note or 'nothing converted '}({reason})")
                fields = first.to_dict()
                report.max_abs_err = fields.get("max_abs_err")
                if isinstance(content, dict) and isinstance(content.get("optimizer"), dict):
                    fields["optimizer"] = _follow_in_optimizer(content["optimizer"], first.replaced)
        except VerificationFailed as error:  # the models were left unchanged; the pipeline reports the failure
            report.problem = str(getattr(error.report, "verification", error.report) or error)
            return report
        model = models.get("ema") or models.get("model")
        report.after = model  # a .safetensors output is proven loaded into it, as users load it
        left, lines = leftover(model, options.to, options.scope)
        report.fields = {"kind": ckpt.kind, "scope": options.scope, **fields, **left}
        if ultralytics:  # the JSON key earlier releases gave; the text says it after what was converted
            report.fields["note"] = f"{ALREADY}; its stem was converted"
            report.details.append(f"  {loaded.path} was {ALREADY}; only the conversion above changed it")
        report.details += lines
        report.write = lambda dst: (
            save_checkpoint(dict(model.state_dict()), dst, {"converted_by": "focus-surgery", "to": options.to})
            if dst.suffix == ".safetensors"
            else save_checkpoint(content, dst, like=loaded)
        )
        return report


def _already(models: dict[str, nn.Module], options: ConvertOptions) -> str | None:
    """What a model whose stem did not convert already is, when it is the form asked for (its stem converts the
    other way); None otherwise."""
    from ..surgery import plan

    back = {"conv": "focus", "focus": "conv"}.get(options.to)
    if back is None or options.scope != "stem":
        return None
    found = [plan(m, back, "stem")[0] for m in models.values()]
    if not all(changes and changes[0].record is not None for changes in found):
        return None
    stem = found[0][0].record
    return f"its stem ({stem.path}) already is a {stem.old_form}, the --to {options.to} form"


def _follow_in_optimizer(optimizer: dict, replaced: list) -> str:
    """The optimizer state of each replaced stem weight remapped like the weight (an exact permutation), in place;
    a state the change cannot be applied to (a zero-padded kernel) is refused, named."""
    from .plain import remap_optimizer_state

    done = []
    for change in replaced:
        if list(change.old_weight_shape) == list(change.new_weight_shape):
            continue
        remap = weight_permutation(change.old_weight_shape, change.new_weight_shape, change.block_size, change.order)
        if remap is None:
            refuse_unconverted(optimizer, change.old_weight_shape, what=f"{change.path} stem")
            continue
        done.append(remap_optimizer_state(optimizer, change.old_weight_shape, remap))
    return "; ".join(done) or "no optimizer state of a changed weight"
