"""Plain state dicts, at the top level or under ``WRAPPER_KEYS``: every state dict holding the stem (model and EMA) and
the optimizer's state for the stem weight (the same permutation: momentum is linear in the gradients) are converted;
the wrapper, every other entry, key order and dtype are kept; any other copy refuses (``copies``)."""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch

from ..checkpoint_io import save_checkpoint
from ..errors import ConversionError
from ..report import ConvertReport
from ..remap import conv_to_focus_weight, focus_to_conv_weight
from ..state_dict import StemKeys, convert_state_dict, find_stem
from .base import ANY_LAYOUT, CHECKPOINTS, TIMM_TRAIN, ConvertOptions, Source
from .copies import refuse_unconverted
from .compare import STEM_ASSUMES, check_stem, compare_state_dicts
from .evidence import WRAPPER_KEYS, Evidence, StemTensors, resolve, said_stems, tensors
from .loading import Loaded
from ..verify import DEFAULT_TOLERANCE

__all__ = ["WRAPPER_KEYS", "PlainStateDictSource", "remap_optimizer_state", "tensors"]
STEM_FROM_FILE = "the stem run before and after in float64 ({}): block size {} and order {} are the file's own"


def _at(content: dict, place: str | None) -> dict:
    return content if place is None else content[place]


_BUFFERS = (".running_mean", ".running_var", ".num_batches_tracked")  # BatchNorm's state dict entries, not parameters


def _param_id_by_order(optimizer: dict, state_dict: dict, weight_key: str) -> Any:
    """The optimizer's id of ``weight_key`` from the parameter order, where it is exact, else None: the state dict's
    keys without BatchNorm's buffers in one group, or in timm's two (``param_groups_weight_decay``: 1-D / bias with
    weight decay 0, then the rest), taken only when group sizes and every state entry's shape agree, and unanimous.
    """
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not isinstance(state, dict) or not isinstance(groups, list):
        return None
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        return None
    params = [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and not k.endswith(_BUFFERS)]
    sizes = [len(g["params"]) for g in groups]
    no_decay = [k for k in params if state_dict[k].ndim <= 1 or k.endswith(".bias")]
    orders = [params] if sizes == [len(params)] else []
    if sizes == [len(no_decay), len(params) - len(no_decay)] and groups[0].get("weight_decay") == 0:
        orders.append(no_decay + [k for k in params if k not in set(no_decay)])
    ids = [pid for g in groups for pid in g["params"]]
    shapes = {  # of each parameter's state entries
        pid: [v.shape for v in e.values() if isinstance(v, torch.Tensor) and v.ndim]
        for pid, e in state.items()
        if isinstance(e, dict)
    }
    found = set()
    for order in orders:
        by_id = dict(zip(ids, order))
        if len(by_id) != len(order) or weight_key not in order:
            continue
        owned = (pid in by_id and all(s == state_dict[by_id[pid]].shape for s in shapes[pid]) for pid in shapes)
        if all(owned):
            found.add(ids[order.index(weight_key)])
    return found.pop() if len(found) == 1 else None


def remap_optimizer_state(
    optimizer: Any, shape: Any, remap: Callable, state_dict: dict | None = None, weight_key: str | None = None
) -> str:
    """Remap, in place, the optimizer state of the stem weight (the one parameter whose state has its ``shape``, or
    where several have, the one the parameter order of ``state_dict`` names) with the weight's own ``remap``.

    Raises:
        ConversionError: Several parameters' state have the stem's shape and the order does not say which is the stem's.
    """
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    if not isinstance(state, dict) or not state:
        return "no optimizer state"
    old = torch.Size(shape)
    owners = [
        pid
        for pid, entry in state.items()
        if isinstance(entry, dict) and any(isinstance(v, torch.Tensor) and v.shape == old for v in entry.values())
    ]
    if not owners:
        return f"no optimizer state has the stem weight's shape {list(old)}: nothing to remap"
    by_order = _param_id_by_order(optimizer, state_dict, weight_key) if state_dict and weight_key else None
    if len(owners) > 1 and by_order in owners:  # the parameter order says which is the stem's
        owners = [by_order]
    if len(owners) > 1:  # which one is the stem's is unknown: converting none would leave a half-converted file
        raise ConversionError(
            f"the optimizer state of parameters {', '.join(map(str, owners[:4]))} all have the stem weight's shape "
            f"{list(old)}, so the stem's own state (optimizer.state.<id>) cannot be told apart to convert it; remove "
            "'optimizer' from the file (a fresh optimizer state) and convert again"
        )
    entry = state[owners[0]]
    for key, value in entry.items():
        if isinstance(value, torch.Tensor) and value.shape == old:
            entry[key] = remap(value)
    return f"optimizer state of the stem weight (parameter {owners[0]}) remapped"


def _with_tensors(original: dict, converted: dict[str, torch.Tensor]) -> dict:
    """``converted`` in the original's container type, non-tensor entries kept in place."""
    out = OrderedDict() if isinstance(original, OrderedDict) else {}
    renamed = iter(k for k in converted if k not in original)
    for key, value in original.items():
        if key in converted:
            out[key] = converted[key]
        elif isinstance(value, torch.Tensor):
            new_key = next(renamed, None)  # the stem's keys, renamed in the same order
            if new_key is None:
                raise ConversionError(f"the converted state dict lost the entry {key!r}")
            out[new_key] = converted[new_key]
        else:
            out[key] = value
    if hasattr(original, "_metadata"):
        out._metadata = copy.deepcopy(original._metadata)
    return out


_CONVERTED_NOTE = "; already converted (a strided conv stem, as convert --to conv writes it) or a conv stem by birth"


def _holding(content: dict) -> list[str]:
    """The wrapper keys under which ``content`` holds a state dict of tensors, with a stem or not."""
    return [p for p in WRAPPER_KEYS if isinstance(content.get(p), dict) and tensors(content[p])]


class PlainStateDictSource(Source):
    name = "state_dict"
    description = "plain state dict (top level or under model / state_dict / ema / model_ema / module)"
    targets = ("conv", "focus", "fastest")
    uses = ("block_size", "order")  # a state dict has no stem geometry of its own
    outputs = {ANY_LAYOUT: (*CHECKPOINTS, TIMM_TRAIN, ".bin", ".ckpt", ".pkl")}
    not_found = (
        "no Focus or conv stem found: no conv weight is '<prefix>.conv.conv.weight' with {} input "
        "channels or '<prefix>.conv.weight' with 3 (looked at the top level and under " + ", ".join(WRAPPER_KEYS) + ")"
    )

    def claims(self, loaded: Loaded) -> bool:
        content = loaded.content
        return isinstance(content, dict) and not loaded.names and all(isinstance(k, str) for k in content)

    def geometry_from_file(self, loaded: Loaded, options: ConvertOptions) -> bool:
        found, _ = self._quiet_evidence(loaded, options.block_size, options.order)
        return bool(found and found.from_file)  # else the stem check replays the order and block size given

    @staticmethod
    def _quiet_evidence(loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> tuple[Evidence | None, str]:
        """The evidence, or why it cannot be had (for inspect and verify, which never refuse)."""
        try:
            return resolve(loaded.path, loaded.content, ConvertOptions(block_size=block_size, order=order)), ""
        except ConversionError as error:
            return None, str(error).removeprefix(f"{loaded.path}: ")

    def state_dict(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict:
        content = loaded.content if isinstance(loaded.content, dict) else {}
        found, _ = self._quiet_evidence(loaded, block_size, order)
        holding = _holding(content)
        place = found.places[0] if found else (None if tensors(content) or not holding else holding[0])
        result = self._stem_tensors(content, place, found)
        if found is not None:  # every other copy holding the stem (timm's state_dict_ema): verify compares it too
            result.copies = {p: self._stem_tensors(content, p, found) for p in found.places[1:]}
        return result

    @staticmethod
    def _stem_tensors(content: dict, place: str | None, found: Evidence | None) -> StemTensors:
        result = StemTensors(tensors(_at(content, place)))
        if found is not None and found.from_file:  # the file said where its stem is and how it computes
            result.stem, result.block_size, result.order = found.stems[place], found.block_size, found.order
        return result

    def compare_tensors(
        self, a: dict, b: dict, block_size: int = 2, order: str = "yolov5", tolerance: float = DEFAULT_TOLERANCE
    ) -> dict[str, Any]:
        """``verify`` of two state dicts: where both files named the same weightless stem (timm's ``arch``), the stem
        of ``a`` is remapped with the geometry they named; else by key layout, as any source. Every copy both files
        hold (model and EMA) is compared, not only the first."""
        check = self._compare_one(a, b, block_size, order, tolerance)
        for place in [p for p in getattr(a, "copies", {}) if p in getattr(b, "copies", {})]:
            if not check["passed"]:
                break
            other = self._compare_one(a.copies[place], b.copies[place], block_size, order, tolerance)
            check = dict(check, compared=f"{check['compared']}; also under '{place}'", passed=other["passed"])
            check["tensors"] += other["tensors"]
            errors = [e for e in (check["max_abs_err"], other["max_abs_err"]) if e is not None]
            check["max_abs_err"] = max(errors) if errors else None
            check["problem"] = "" if other["passed"] else f"{other['problem']} (under '{place}')"
        return check

    def _compare_one(self, a: dict, b: dict, block_size: int, order: str, tolerance: float) -> dict[str, Any]:
        stems = said_stems(a, b) if isinstance(a, StemTensors) and isinstance(b, StemTensors) else None
        if stems is None or (a.block_size, a.order) != (b.block_size, b.order):
            return super().compare_tensors(a, b, block_size, order, tolerance)
        return compare_state_dicts(dict(a), dict(b), a.block_size, a.order, tolerance=tolerance, stems=stems)

    def inspect(self, loaded: Loaded, block_size: int = 2, order: str = "yolov5") -> dict[str, Any]:
        found, why = self._quiet_evidence(loaded, block_size, order)
        sd = self.state_dict(loaded, block_size, order)
        stem = found.stems[found.places[0]] if found else None
        stems = [{**vars(stem), "converts_to": "focus" if stem.form == "conv" else "conv"}] if stem else []
        content = loaded.content if isinstance(loaded.content, dict) else {}
        holding = ([None] if tensors(content) else []) + _holding(content)  # every state dict of the file
        place = found.places[0] if found else (holding or [None])[0]
        others = [k for k in loaded.content if k not in holding] if place else []
        counts = {str(p): len(tensors(_at(content, p))) for p in holding}
        result = {"path": str(loaded.path), "kind": "state_dict", "source": self.name, "wrapper": place}
        result.update(tensors=len(sd), stems=stems, other_keys=others, wrappers=[p for p in holding if p is not None])
        result["tensors_per_wrapper"] = counts
        if found:
            result.update(block_size=found.block_size, order=found.order, geometry_from=found.said_by)
        where = f" under '{place}'" if place else ""
        lines = [f"{loaded.path}: {self.description.split(' (')[0]}{where}, {len(sd)} tensors"]
        more = [f"'{p}' ({counts[str(p)]} tensors)" for p in holding if p is not None and p != place]
        if more:
            lines.append(f"  also state dicts under: {', '.join(more)}")
        if others:
            lines.append(f"  also holds: {', '.join(map(str, others))}")
        for s in stems:
            to, note = s["converts_to"], _CONVERTED_NOTE if s["form"] == "conv" else ""
            lines.append(f"  stem {s['prefix']}: {s['form']} form, weight {s['shape']} (convert --to {to}){note}")
        if found and found.from_file:
            lines.append(f"  block size {found.block_size}, order {found.order}: from the file's {found.said_by}")
        if not stems:
            lines.append(f"  {why}" if why else "  no Focus / space-to-depth / strided-conv stem found")
        result["lines"] = lines
        return result

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        found = resolve(loaded.path, loaded.content, options)
        if found is None:
            raise ConversionError(f"{loaded.path}: " + self.not_found.format(3 * options.block_size**2))
        places, first = found.places, found.stems[found.places[0]]
        options = dataclasses.replace(options, block_size=found.block_size, order=found.order)
        if options.to == "fastest":
            return self._fastest(loaded, options, places[0], first)
        content = loaded.content
        new_content = dict(content) if places[0] is not None else None
        fields: dict[str, Any] = {"kind": "state_dict", "wrapper": places[0], "converted": [p for p in places if p]}
        fields.update(block_size=found.block_size, order=found.order, geometry_from=found.said_by)
        checks = []
        shared: dict = {}  # (id of the original stem weight, key) -> its converted tensor, written once
        for place in places:
            before, under = tensors(_at(content, place)), f" (under '{place}')" if place else ""
            bs, order = options.block_size, options.order
            try:
                after, stem = convert_state_dict(before, options.to, bs, order, stem=found.stems[place])
            except ValueError as error:  # already in that form, or a form that converts one way only
                raise ConversionError(f"{loaded.path}: {error}{under}") from None
            if options.verify:  # before the output is assembled: a broken conversion is a failed check, not a crash
                try:
                    checks.append(self._check(before, after, options, found.stems[place]))
                except ConversionError as error:  # a stem that cannot run (corrupt): which copy, model or EMA
                    raise ConversionError(f"{error}{under}") from None
                if not checks[-1]["passed"]:
                    break
            for key, value in after.items():  # a tensor the copies shared (dict(sd)) stays one shared tensor
                if key not in before or value is not before[key]:
                    after[key] = shared.setdefault((id(before.get(stem.weight_key)), key), value)
            if place is None:
                new_content = _with_tensors(content, after)
            else:
                new_content[place] = _with_tensors(content[place], after)
            if place == places[0]:
                fields.update(stem=stem.prefix, weight_key=stem.weight_key)
                fields.update(dtype=str(before[stem.weight_key].dtype)[6:], **{"from": stem.form})
        if places[0] is not None and isinstance(content.get("optimizer"), dict):
            new_content["optimizer"] = copy.deepcopy(content["optimizer"])
            remap = focus_to_conv_weight if options.to == "conv" else conv_to_focus_weight
            fields["optimizer"] = remap_optimizer_state(
                new_content["optimizer"],
                first.shape,
                lambda w: remap(w, options.block_size, options.order),
                tensors(content[places[0]]),
                first.weight_key,
            )
        if places[0] is not None and not (checks and not checks[-1]["passed"]):
            skip = [new_content[p] for p in places]
            stem_id = _param_id_by_order(content.get("optimizer"), tensors(content[places[0]]), first.weight_key)
            if stem_id is not None:  # the order gave every state entry its parameter: the others are not the stem's
                skip += [entry for pid, entry in new_content["optimizer"]["state"].items() if pid != stem_id]
            refuse_unconverted(new_content, first.shape, skip)
        report = ConvertReport(str(loaded.path), self.name, options.to, fields=fields)
        report.write = lambda dst: self.write(new_content, places[0], dst, options.to, loaded)
        if checks:
            assumes = STEM_ASSUMES.format(options.order)
            if found.from_file:
                assumes = STEM_FROM_FILE.format(found.said_by, found.block_size, found.order)
            fields.update(verification=checks[0], assumes=assumes)
            report.max_abs_err = max(c["stem"]["max_abs_err"] for c in checks)
            report.problem = next((c["problem"] for c in checks if not c["passed"]), None)
        return report

    @staticmethod
    def _check(before: dict, after: dict, options: ConvertOptions, stem: StemKeys | None = None) -> dict[str, Any]:
        """The remapped stem run in float64, and every other tensor compared bit for bit."""
        stems = None
        if stem is not None and stem.weightless:  # the file said where the stem is: the same key in both forms
            shape = list(after[stem.weight_key].shape)
            form = "conv" if stem.form == "reorg" else "reorg"
            stems = (stem, StemKeys(stem.prefix, form, stem.weight_key, shape, weightless=True))
        return check_stem(before, after, options.block_size, options.order, stems)

    @staticmethod
    def write(content: dict, place: str | None, dst: Path, to: str, like: Loaded | None = None) -> None:
        """``.safetensors``: the state dict's tensors (and where they were); any other suffix: the whole content, in
        the container, protocol and globals of ``like`` (the input as read)."""
        if dst.suffix == ".safetensors":
            metadata = {"converted_by": "focus-surgery", "to": to, **({"wrapper": place} if place else {})}
            save_checkpoint(tensors(_at(content, place)), dst, metadata)
        else:
            save_checkpoint(content, dst, like=like)

    def _fastest(self, loaded: Loaded, options: ConvertOptions, place: str | None, found: StemKeys) -> ConvertReport:
        from ..speed.optimize import fastest_state_dict_form

        sd = tensors(_at(loaded.content, place))
        stem = find_stem(sd, block_size=options.block_size)
        if stem is None or stem.weight_key != found.weight_key:
            raise ConversionError(
                f"{loaded.path}: --to fastest times Focus / ReOrg / conv stem layouts; this stem "
                f"({found.weight_key}) converts --to conv or --to focus"
            )
        geometry = (options.block_size, options.order)
        form, medians = fastest_state_dict_form(sd, options.batch, options.input_size, *geometry)
        if form == stem.form:  # already the faster layout: written unchanged
            fields = {"kind": "state_dict", "stem": stem.prefix, "from": stem.form}
            report = ConvertReport(str(loaded.path), self.name, "fastest", fields=fields)
            report.write = lambda dst: self.write(loaded.content, place, dst, form, loaded)
        else:
            report = self.convert(loaded, dataclasses.replace(options, to=form))
            report.to = "fastest"
        report.fields.update(chosen=form, median_ms=medians)
        report.change = f"stem to fastest here: {form}"
        return report
