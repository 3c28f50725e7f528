"""Plain state dicts: at the top level, or nested under ``model``, ``state_dict``, ``ema``, ``model_ema``, ``module``.

The stem is found by its key layout (``state_dict.find_stem``). The output keeps the file's wrapper, every other
entry (optimizer, epoch, ...), key order and dtype; the optimizer's state for the stem weight (momentum buffers) is
remapped with the same permutation, which is exact because momentum is linear in the gradients.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..checkpoint_io import save_checkpoint
from ..errors import ConversionError
from ..report import ConvertReport
from ..remap import conv_to_focus_weight, focus_to_conv_weight
from ..state_dict import convert_state_dict, find_stem
from .base import ANY_LAYOUT, ConvertOptions, Source
from .compare import STEM_ASSUMES, StateDictStem
from .loading import Loaded

WRAPPER_KEYS = ("state_dict", "model", "ema", "model_ema", "module", "state_dict_ema", "ema_state_dict")


def tensors(mapping: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mapping.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def stem_places(content: Any, block_size: int = 2) -> list[str | None]:
    """Where state dicts with a stem are: ``[None]`` for the top level, else the wrapper keys (model, ema, ...)."""
    if not isinstance(content, dict):
        return []
    if find_stem(tensors(content), block_size=block_size):
        return [None]
    return [
        k
        for k in WRAPPER_KEYS
        if isinstance(content.get(k), dict) and find_stem(tensors(content[k]), block_size=block_size)
    ]


def tensor_places(content: Any, block_size: int = 2) -> list[str | None]:
    """Where the state dicts are: those with a stem first (``stem_places``), else every level holding tensors (the
    top level as ``None``, then the wrapper keys): what ``inspect`` and ``verify`` read, whatever the stem."""
    if not isinstance(content, dict):
        return []
    found = stem_places(content, block_size)
    if found:
        return found
    top = [None] if tensors(content) else []
    return top + [k for k in WRAPPER_KEYS if isinstance(content.get(k), dict) and tensors(content[k])]


def _at(content: dict, place: str | None) -> dict:
    return content if place is None else content[place]


def remap_optimizer_state(optimizer: Any, shape: Any, remap: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Remap, in place, the optimizer state (momentum buffers) of the stem weight, found as the one parameter whose
    state has the stem weight's ``shape``, with the weight's own ``remap``; say what was done. Exact: momentum is
    linear in the gradients."""
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(state, dict) or not state:
        return "no optimizer state"
    old = torch.Size(shape)
    owners = [
        pid
        for pid, entry in state.items()
        if isinstance(entry, dict) and any(isinstance(v, torch.Tensor) and v.shape == old for v in entry.values())
    ]
    if len(owners) != 1:
        return f"optimizer state kept as is: {len(owners)} parameters have the stem weight's shape {list(old)}"
    entry = state[owners[0]]
    for key, value in entry.items():
        if isinstance(value, torch.Tensor) and value.shape == old:
            entry[key] = remap(value)
    return f"optimizer state of the stem weight (parameter {owners[0]}) remapped"


def _with_tensors(original: dict, converted: dict[str, torch.Tensor], strict: bool = True) -> dict:
    """``converted`` in the original's container type, non-tensor entries kept in place.

    ``strict=False`` (under ``--verify``): an entry the conversion lost is left out, for the proof of the written
    file to find (a failed check, exit 1), instead of refused here."""
    out = OrderedDict() if isinstance(original, OrderedDict) else {}
    renamed = iter(k for k in converted if k not in original)
    for key, value in original.items():
        if key in converted:
            out[key] = converted[key]
        elif isinstance(value, torch.Tensor):
            new_key = next(renamed, None)  # the stem's keys, renamed in the same order
            if new_key is None and strict:
                raise ConversionError(f"the converted state dict lost the entry {key!r}")
            if new_key is not None:
                out[new_key] = converted[new_key]
        else:
            out[key] = value
    if hasattr(original, "_metadata"):
        out._metadata = copy.deepcopy(original._metadata)
    return out


_CONVERTED_NOTE = "; already converted (a strided conv stem, as convert --to conv writes it) or a conv stem by birth"


class PlainStateDictSource(Source):
    name = "state_dict"
    description = "plain state dict (top level or under model / state_dict / ema / model_ema / module)"
    targets = ("conv", "focus", "fastest")
    uses = ("block_size", "order")  # a state dict has no stem geometry of its own
    outputs = {ANY_LAYOUT: (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".safetensors")}
    not_found = (
        "no Focus or conv stem found: no conv weight is '<prefix>.conv.conv.weight' with {} input "
        "channels or '<prefix>.conv.weight' with 3 (looked at the top level and under " + ", ".join(WRAPPER_KEYS) + ")"
    )

    def claims(self, loaded: Loaded) -> bool:
        content = loaded.content
        return isinstance(content, dict) and not loaded.names and all(isinstance(k, str) for k in content)

    def geometry_from_file(self, loaded: Loaded, options: ConvertOptions) -> bool:
        return False  # a state dict holds no order or block size: the stem check replays the ones given

    def _places(self, loaded: Loaded, block_size: int) -> list[str | None]:
        places = stem_places(loaded.content, block_size)
        if not places:
            raise ConversionError(f"{loaded.path}: " + self.not_found.format(3 * block_size**2))
        return places

    def state_dict(self, loaded: Loaded, block_size: int = 2) -> dict:
        places = tensor_places(loaded.content, block_size) or [None]
        return tensors(_at(loaded.content, places[0]) if isinstance(loaded.content, dict) else {})

    def inspect(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict[str, Any]:
        content = loaded.content
        places = tensor_places(content, block_size)
        sd = self.state_dict(loaded, block_size)
        stem = find_stem(sd, block_size=block_size)
        stems = [{**vars(stem), "converts_to": "focus" if stem.form == "conv" else "conv"}] if stem else []
        others = [k for k in content if k not in places] if places and places[0] else []
        counts = {str(p): len(tensors(_at(content, p))) for p in places}
        result = {
            "path": str(loaded.path),
            "kind": "state_dict",
            "source": self.name,
            "wrapper": places[0] if places else None,
            "wrappers": [p for p in places if p is not None],
            "tensors": len(sd),
            "tensors_per_wrapper": counts,
            "block_size": block_size,
            "order": order,
            "stems": stems,
            "other_keys": others,
        }
        where = f" under '{places[0]}'" if places and places[0] else ""
        lines = [f"{loaded.path}: {self.description.split(' (')[0]}{where}, {len(sd)} tensors"]
        more = [f"'{p}' ({counts[str(p)]} tensors)" for p in places[1:] if p is not None]
        if more:
            lines.append(f"  also state dicts under: {', '.join(more)}")
        if others:
            lines.append(f"  also holds: {', '.join(map(str, others))}")
        for s in stems:
            lines.append(
                f"  stem {s['prefix']}: {s['form']} form, weight {s['shape']} (convert --to {s['converts_to']})"
                + (_CONVERTED_NOTE if s["form"] == "conv" else "")
            )
        if not stems:
            lines.append(f"  no Focus / space-to-depth / strided-conv stem found (block size {block_size})")
        result["lines"] = lines
        return result

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        places = self._places(loaded, options.block_size)
        if options.to == "fastest":
            return self._fastest(loaded, options, places)
        content = loaded.content
        new_content = dict(content) if places[0] is not None else None
        fields: dict[str, Any] = {"kind": "state_dict", "wrapper": places[0], "converted": [p for p in places if p]}
        for place in places:
            before = tensors(_at(content, place))
            after, stem = convert_state_dict(before, options.to, options.block_size, options.order)
            if place is None:
                new_content = _with_tensors(content, after, strict=not options.verify)
            else:
                new_content[place] = _with_tensors(content[place], after, strict=not options.verify)
            if place == places[0]:
                fields.update(
                    stem=stem.prefix, weight_key=stem.weight_key, dtype=str(before[stem.weight_key].dtype)[6:]
                )
                fields["from"] = stem.form
        if places[0] is not None and isinstance(content.get("optimizer"), dict):
            new_content["optimizer"] = copy.deepcopy(content["optimizer"])
            stem = find_stem(tensors(content[places[0]]), block_size=options.block_size)
            remap = focus_to_conv_weight if options.to == "conv" else conv_to_focus_weight
            fields["optimizer"] = remap_optimizer_state(
                new_content["optimizer"], stem.shape, lambda w: remap(w, options.block_size, options.order)
            )
        report = ConvertReport(str(loaded.path), self.name, options.to, fields=fields)
        report.write = lambda dst: self.write(new_content, places[0], dst, options.to)
        if options.verify:  # the proof (``sources.proof``) runs the stems of the file as written
            fields["assumes"] = STEM_ASSUMES.format(options.order)
        return report

    def stems(self, loaded: Loaded, options: ConvertOptions) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
        """Each state dict's stem as it computes (``StateDictStem``: space-to-depth by definition + conv, or the
        strided conv; bias, BatchNorm), named by its wrapper (a ``.safetensors``' metadata names the one it holds)."""
        found = []
        for place in stem_places(loaded.content, options.block_size):
            sd = tensors(_at(loaded.content, place))
            stem = find_stem(sd, block_size=options.block_size)
            module = StateDictStem(sd, stem, options.block_size, options.order).double().eval()
            channels = stem.shape[1] // (options.block_size**2 if module.s2d else 1)
            name = place if place is not None else loaded.metadata.get("wrapper") or "<top level>"
            found.append((str(name), module, (2, channels, 8 * options.block_size, 12 * options.block_size)))
        return found

    @staticmethod
    def write(content: dict, place: str | None, dst: Path, to: str) -> None:
        """``.safetensors``: the state dict's tensors (and where they were); any other suffix: the whole content."""
        if dst.suffix == ".safetensors":
            metadata = {"converted_by": "focus-surgery", "to": to, **({"wrapper": place} if place else {})}
            save_checkpoint(tensors(_at(content, place)), dst, metadata)
        else:
            save_checkpoint(content, dst)

    def _fastest(self, loaded: Loaded, options: ConvertOptions, places: list) -> ConvertReport:
        from ..speed.optimize import fastest_state_dict_form

        sd = tensors(_at(loaded.content, places[0]))
        form, medians = fastest_state_dict_form(
            sd, options.batch, options.input_size, options.block_size, options.order
        )
        stem = find_stem(sd, block_size=options.block_size)
        if form == stem.form:  # already the faster layout: written unchanged
            fields = {"kind": "state_dict", "stem": stem.prefix, "from": stem.form}
            report = ConvertReport(str(loaded.path), self.name, "fastest", fields=fields)
            report.write = lambda dst: self.write(loaded.content, places[0], dst, form)
        else:
            report = self.convert(loaded, dataclasses.replace(options, to=form))
            report.to = "fastest"
        report.fields.update(chosen=form, median_ms=medians)
        report.change = f"stem to fastest here: {form}"
        return report
