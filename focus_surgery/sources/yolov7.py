"""yolov7 / YOLOR (``paper`` branch) checkpoints: pickled ``models.yolo.Model`` records whose first rows are a
weightless ``ReOrg`` (known by what its class computes, ``SPACE_TO_DEPTH``) and a ``Conv(12, C, 3, 1)``. The records and
``model.yaml`` are edited alike: ``ReOrg`` -> ``nn.Identity`` (row indices stay), conv -> ``Conv(3, C, 6, 2, 2)``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_io import CheckpointError, save_checkpoint
from ..remap import focus_to_conv_weight
from ..loader import Record, record_class
from ..errors import ConversionError
from ..report import ConvertReport, bounded
from .base import ConvertOptions, Source, tensors_only
from .compare import recorded_stem
from .copies import refuse_unconverted
from .loading import Loaded
from .plain import remap_optimizer_state

# Weightless rows, by the class the file names, and what that class computes in its repository (block, order).
SPACE_TO_DEPTH = {"models.common.ReOrg": (2, "yolov5")}
# classes only yolov7 / YOLOR (paper) define (YOLOv5 and the yolov3 repository have none of them)
FAMILY_MARKS = {f"models.common.{c}" for c in "ReOrg DownC SPPCSPC ImplicitA ImplicitM RepConv BottleneckCSPF".split()}
FAMILY_MARKS |= {"models.common.SPPCSP", *(f"models.yolo.{c}" for c in ("IDetect", "IAuxDetect", "IBin", "IKeypoint"))}
IDENTITY, CONV2D = "torch.nn.modules.linear.Identity", "torch.nn.modules.conv.Conv2d"


def family(names: frozenset) -> str:
    """``yolov7`` or ``yolor-paper``, from the classes the pickle named."""
    yolov7 = {"models.common.DownC", "models.common.SPPCSPC", "models.yolo.IAuxDetect", "models.common.RepConv"}
    return "yolov7" if names & yolov7 else "yolor-paper"


def _layers(model: Record) -> dict[str, Record]:
    return model.children()["model"].state["_modules"]


def _is_conv_row(record: Record) -> bool:
    children = record.children()
    conv = children.get("conv")
    if conv is None or conv.qualname != CONV2D or not set(children) <= {"conv", "bn", "act"}:
        return False
    return tuple(conv.get("stride")) == (1, 1) and conv.get("groups") == 1 and tuple(conv.get("dilation")) == (1, 1)


def stem_rows(model: Record, scope: str = "stem") -> list[tuple[int, int, str]]:
    """(row, block size, order) of each weightless space-to-depth row followed by a conv row that alone reads it."""
    layers = list(_layers(model).values())
    found = []
    for i, layer in enumerate(layers[:-1]):
        if layer.qualname not in SPACE_TO_DEPTH:
            continue
        nxt = layers[i + 1]
        readers = [r for r in layers[i + 2 :] if i in (r.get("f") if isinstance(r.get("f"), list) else [r.get("f")])]
        if nxt.get("f") == -1 and _is_conv_row(nxt) and not readers:
            found.append((i, *SPACE_TO_DEPTH[layer.qualname]))
        if scope == "stem":
            break
    return found


def converted_rows(model: Record) -> list[int]:
    """Rows ``convert`` wrote: an ``nn.Identity`` row (the former space-to-depth) followed by a conv row of stride > 1
    that reads it (``_convert_row``); the Identity's row index."""
    layers = list(_layers(model).values())
    found = []
    for i, layer in enumerate(layers[:-1]):
        conv = layers[i + 1].children().get("conv") if layer.qualname == IDENTITY else None
        if conv is not None and conv.qualname == CONV2D and tuple(conv.get("stride")) > (1, 1):
            found.append(i)
    return found


def _identity_record(old: Record) -> Record:
    """An ``nn.Identity`` record with ``old``'s routing attributes (i, f, type, np)."""
    record = record_class(IDENTITY)()
    record.state.update(copy.copy(nn.Identity().__dict__))
    record.state.update({k: old.get(k) for k in ("training", "i", "f")}, type=IDENTITY, np=0)
    return record


def _convert_row(layers: dict, index: int, bs: int, order: str) -> dict[str, Any]:
    """ReOrg row ``index`` -> Identity; conv row ``index + 1`` -> one strided conv (weight remapped)."""
    keys = list(layers)
    old_s2d, row = layers[keys[index]], layers[keys[index + 1]]
    conv = row.children()["conv"]
    weight = conv.state["_parameters"]["weight"]
    (kh, kw), (ph, pw) = tuple(conv.get("kernel_size")), tuple(conv.get("padding"))
    new_weight = focus_to_conv_weight(weight.detach(), bs, order)
    conv.state["_parameters"]["weight"] = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    conv.state.update(in_channels=conv.get("in_channels") // bs**2, kernel_size=(bs * kh, bs * kw), stride=(bs, bs))
    conv.state.update(padding=(bs * ph, bs * pw), _reversed_padding_repeated_twice=(bs * pw, bs * pw, bs * ph, bs * ph))
    layers[keys[index]] = _identity_record(old_s2d)
    return {
        "rows": [index, index + 1],
        "from": f"{old_s2d.name} + Conv({kh}x{kw}, stride 1)",
        "to": f"Identity + Conv({bs * kh}x{bs * kw}, stride {bs}, padding {bs * ph})",
        "weight": [list(weight.shape), list(new_weight.shape)],
        "block_size": bs,
        "order": order,
    }


def _tensors_key(models: dict[str, Record]) -> str:
    """The model whose tensors a tensors-only output holds (and the stem proof compares): the EMA where there is one,
    as ``attempt_load`` takes it, else the model."""
    return "ema" if "ema" in models else "model"


def _converted_stems(
    models: dict[str, Record], written: dict[str, torch.Tensor] | None = None
) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """Each converted stem row of ``models`` as it computes, named ``<model key>:<conv row>``; ``written``: the row
    tensors by state-dict key (``model.<row>.conv.weight``...: a tensors-only output's, read back) instead of the
    records' own."""
    found = []
    for key, model in models.items():
        layers = _layers(model)
        for i in converted_rows(model):
            row = f"model.{i + 1}."
            state = None if written is None else {k[len(row) :]: v for k, v in written.items() if k.startswith(row)}
            found.append((f"{key}:{i + 1}", *recorded_stem(layers[str(i + 1)], state=state)))
    return found


def sync_yaml_rows(yaml: dict, index: int, block_size: int) -> None:
    """ReOrg row -> ``[f, 1, nn.Identity, []]``; its conv row -> ``[f, n, Conv, [c2, bs*k, bs, bs*p]]`` (c2 as is)."""
    rows = list(yaml.get("backbone") or []) + list(yaml.get("head") or [])
    (f, n, module, args), s2d_row = rows[index + 1][:4], rows[index]
    k = args[1] if len(args) > 1 else 1
    p = args[3] if len(args) > 3 and args[3] is not None else k // 2
    new_conv = [f, n, module, [args[0], block_size * k, block_size, block_size * p, *args[4:]]]
    backbone = len(yaml["backbone"])
    for at, new in ((index, [s2d_row[0], 1, "nn.Identity", []]), (index + 1, new_conv)):
        section, j = ("backbone", at) if at < backbone else ("head", at - backbone)
        yaml[section][j] = new


class Yolov7Source(Source):
    name = "yolov7"
    description = "yolov7 / YOLOR (paper branch) repository checkpoint (models.yolo.Model with ReOrg)"
    specificity = 20  # names models.yolo.* like a YOLOv5 file, and classes only yolov7 / YOLOR define
    scopes = ("stem", "all")

    def claims(self, loaded: Loaded) -> bool:
        return isinstance(loaded.content, dict) and bool(loaded.names & FAMILY_MARKS)

    def _models(self, content: dict) -> dict[str, Record]:
        models = {k: content[k] for k in ("model", "ema") if isinstance(content.get(k), Record)}
        ok = all(m.qualname == "models.yolo.Model" and "model" in m.children() for m in models.values())
        if not models or not ok:
            raise CheckpointError(f"no models.yolo.Model under 'model' / 'ema' (keys: {sorted(map(str, content))[:8]})")
        return models

    def state_dict(self, loaded: Loaded) -> dict:
        models = self._models(loaded.content)
        return models[_tensors_key(models)].state_dict()

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        models = self._models(loaded.content)
        model = models.get("ema") or models["model"]
        layers = list(_layers(model).values())
        floats = [t.dtype for t in model.state_dict().values() if t.is_floating_point()]
        info = {"path": str(loaded.path), "kind": family(loaded.names), "source": self.name, "layers": len(layers)}
        info.update({k: bounded(model.get(k)) for k in ("nc", "names")}, epoch=bounded(loaded.content.get("epoch")))
        info.update(dtype=str(floats[0]).replace("torch.", "") if floats else None, stems=[], models=sorted(models))
        lines = [
            f"{loaded.path}: {info['kind']} repository checkpoint ({', '.join(sorted(models))}), {len(layers)} rows, "
            f"nc {info['nc']}, {info['dtype']}, epoch {info['epoch']}"
        ]
        for i, bs, order in stem_rows(model):
            rows, form = [i, i + 1], f"{layers[i].name} + {layers[i + 1].name}"
            info["stems"].append({"rows": rows, "form": form, "block_size": bs, "order": order, "converts_to": "conv"})
            s2d = f"space-to-depth(block_size={bs}, order={order})"
            lines.append(f"  stem rows {rows}: {form} = {s2d} + conv (convert --to conv)")
        done = converted_rows(model) if not info["stems"] else []
        if done:
            info["converted_rows"] = done
        for i in done:
            lines.append(
                f"  already converted: rows [{i}, {i + 1}] are nn.Identity + the strided Conv that convert writes in "
                "place of ReOrg + Conv (nothing to do)"
            )
        if not info["stems"] and not done:
            lines.append("  no ReOrg + Conv stem found")
        info["lines"] = lines
        return info

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        content = loaded.content
        models = self._models(content)
        fields: dict[str, Any] = {"kind": family(loaded.names), "scope": options.scope, "converted": sorted(models)}
        fields["replaced"] = []
        yamls: set[int] = set()
        for key, model in models.items():
            rows = stem_rows(model, options.scope)
            if not rows and converted_rows(model):
                raise ConversionError(
                    f"{loaded.path}: {key}: already converted (row {converted_rows(model)[0]} is the nn.Identity "
                    "convert writes in place of ReOrg); nothing to do"
                )
            if not rows:
                first = list(_layers(model).values())[0].qualname
                raise ConversionError(f"{loaded.path}: {key}: no ReOrg + Conv stem to convert (layer 0 is {first})")
            yaml = model.get("yaml")
            for index, bs, order in reversed(rows):
                change = _convert_row(_layers(model), index, bs, order)
                if key == sorted(models)[0]:
                    fields["replaced"].insert(0, change)
                if isinstance(yaml, dict) and id(yaml) not in yamls:
                    sync_yaml_rows(yaml, index, bs)
            yamls.add(id(yaml))
        fields["yaml"] = "ReOrg row -> nn.Identity, its conv row -> Conv [c2, 6, 2, 2]: row indices unchanged"
        fields["assumes"] = (
            "the file's code is never run: its ReOrg class computes what the yolov7 / YOLOR code's "
            "does, space-to-depth(2, yolov5 order)"
        )
        change = fields["replaced"][0]
        if isinstance(content.get("optimizer"), dict):
            remap = lambda w: focus_to_conv_weight(w, change["block_size"], change["order"])  # noqa: E731
            fields["optimizer"] = remap_optimizer_state(content["optimizer"], change["weight"][0], remap)
        refuse_unconverted(content, change["weight"][0], list(models.values()))
        report = ConvertReport(str(loaded.path), self.name, "conv", options.scope, fields=fields)
        report.write = lambda dst: self._write(content, models, dst, loaded)
        return report

    def stems(self, loaded: Loaded, options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """Each stem row of each model as it computes, named ``<model key>:<conv row>``: space-to-depth + the conv
        block before the conversion, the strided conv block after it."""
        found = []
        for key, model in self._models(loaded.content).items():
            layers = _layers(model)
            for i, bs, order in stem_rows(model, options.scope):
                found.append((f"{key}:{i + 1}", *recorded_stem(layers[str(i + 1)], bs, order)))
            found += _converted_stems({key: model})
        return found

    def held_stems(self, loaded: Loaded, stems: list, written: Loaded) -> list:
        """A tensors-only output holds one model's tensors (``_tensors_key``): that model's stems."""
        if not tensors_only(written):
            return stems
        key = _tensors_key(self._models(loaded.content))
        return [stem for stem in stems if stem[0].startswith(f"{key}:")]

    def written_stems(
        self, loaded: Loaded, written: Loaded, reader: Source, options: ConvertOptions
    ) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """The written file's converted stem rows, named as ``stems`` names them: a records file's, read back. A
        tensors-only output (``.safetensors``: the state dict of ``_tensors_key``'s model, keys
        ``model.<row>.conv.weight``...): each stem row the conversion wrote (``converted_rows`` of that model's
        records, as converted: its conv's kernel, stride, padding and activation, which no tensor holds) run with the
        row's tensors read back from the written file, named as ``stems`` names it."""
        if tensors_only(written):
            models = self._models(loaded.content)
            key = _tensors_key(models)
            return _converted_stems({key: models[key]}, written.content)
        if isinstance(reader, Yolov7Source):  # only the converted form: a row written unconverted is no conversion
            return _converted_stems(reader._models(written.content))
        return super().written_stems(loaded, written, reader, options)

    @staticmethod
    def _write(content: dict, models: dict, dst: Path, like: Loaded) -> None:
        if dst.suffix == ".safetensors":
            model = models[_tensors_key(models)]
            tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
            save_checkpoint(tensors, dst, {"converted_by": "focus-surgery", "to": "conv"})
        else:
            from .records_io import save_records

            save_records(content, dst, like)


__all__ = ["SPACE_TO_DEPTH", "Yolov7Source", "stem_rows", "sync_yaml_rows"]
