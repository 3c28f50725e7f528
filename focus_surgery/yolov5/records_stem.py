"""The stem of a YOLOv5-repository checkpoint converted in its own layout (records, no rebuild): what release v6.0
did to the yaml. ``Focus(c1, c2, k)`` -> ``Conv(c1, c2, 2k, 2, 2p)`` (the Focus's inner ``Conv`` block, its weight
remapped), or back. Works for every head (Detect, Segment, Classify): only row 0 and its yaml row change."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..checkpoint_io import CheckpointError
from ..remap import conv_to_focus_weight, focus_to_conv_weight
from ..loader import Record, record_class

ROUTING = ("i", "f", "type", "np")


def _rows(model: Record) -> dict[str, Record]:
    return model.children()["model"].state["_modules"]


def _set_conv(conv: Record, weight: torch.Tensor, stride: int, padding: int) -> None:
    old = conv.state["_parameters"]["weight"]
    conv.state["_parameters"]["weight"] = nn.Parameter(weight, requires_grad=old.requires_grad)
    k = tuple(weight.shape[2:])
    conv.state.update(
        in_channels=weight.shape[1],
        kernel_size=k,
        stride=(stride, stride),
        padding=(padding, padding),
        _reversed_padding_repeated_twice=(padding,) * 4,
    )


def stem_already(model: Record, to: str) -> str:
    """Why row 0 of a recorded YOLOv5 ``Model`` already is the ``to`` form (a Focus for ``focus``, an even-kernel
    stride-2 Conv for ``conv``), or ``""`` when it is not."""
    stem = _rows(model).get("0")
    if stem is None:
        return ""
    if to == "focus" and stem.name == "Focus":
        return "its stem (row 0) already is a Focus, the --to focus form, in the YOLOv5 layout"
    conv = stem.children().get("conv") if to == "conv" and stem.name == "Conv" else None
    if conv is not None and tuple(conv.get("stride") or ()) == (2, 2) and not conv.get("kernel_size")[0] % 2:
        k = conv.get("kernel_size")[0]
        return f"its stem (row 0) already is a Conv({k}x{k}, stride 2), the --to conv form, in the YOLOv5 layout"
    return ""


def convert_stem_record(model: Record, to: str, path: str) -> dict[str, Any]:
    """Convert row 0 of a recorded YOLOv5 ``Model`` in place (records and ``model.yaml``); what was done.

    Raises:
        CheckpointError: Row 0 is not a Focus (to conv) / not a 6x6 stride-2 Conv (to focus).
    """
    rows = _rows(model)
    stem = rows["0"]
    yaml = model.get("yaml") if isinstance(model.get("yaml"), dict) else model.get("md")
    row = yaml["backbone"][0] if isinstance(yaml, dict) else None
    if to == "conv":
        if stem.name != "Focus":
            raise CheckpointError(f"{path}: row 0 is {stem.qualname}, not a Focus: nothing to convert to conv")
        block = stem.children()["conv"]
        conv = block.children()["conv"]
        w = conv.state["_parameters"]["weight"]
        k, p = conv.get("kernel_size")[0], conv.get("padding")[0]
        _set_conv(conv, focus_to_conv_weight(w.detach(), 2, "yolov5"), 2, 2 * p)
        block.state.update({a: stem.get(a) for a in ROUTING if a in stem.state})
        block.state["type"] = block.qualname
        rows["0"] = block
        if row is not None:
            yaml["backbone"][0] = [row[0], row[1], "Conv", [row[3][0], 2 * k, 2, 2 * p]]
        return {
            "from": f"Focus({k}x{k})",
            "to": f"Conv({2 * k}x{2 * k}, stride 2, padding {2 * p})",
            "weight": [list(w.shape), list(conv.state["_parameters"]["weight"].shape)],
        }
    conv = stem.children().get("conv")
    if stem.name != "Conv" or conv is None or tuple(conv.get("stride")) != (2, 2) or conv.get("kernel_size")[0] % 2:
        raise CheckpointError(f"{path}: row 0 is {stem.qualname}, not an even-kernel stride-2 Conv: no Focus form")
    w = conv.state["_parameters"]["weight"]
    k, p = conv.get("kernel_size")[0], conv.get("padding")[0]
    if p % 2:
        raise CheckpointError(f"{path}: the stem conv has padding {p}: a Focus needs an even padding")
    _set_conv(conv, conv_to_focus_weight(w.detach(), 2, "yolov5"), 1, p // 2)
    focus = record_class(stem.qualname.rpartition(".")[0] + ".Focus")()
    focus.state.update(dict(nn.Module().__dict__), _modules={"conv": stem})
    focus.state.update({a: stem.get(a) for a in ROUTING if a in stem.state}, training=stem.get("training", False))
    focus.state["type"] = focus.qualname
    rows["0"] = focus
    if row is not None:
        yaml["backbone"][0] = [row[0], row[1], "Focus", [row[3][0], k // 2]]
    return {
        "from": f"Conv({k}x{k}, stride 2, padding {p})",
        "to": f"Focus({k // 2}x{k // 2})",
        "weight": [list(w.shape), list(conv.state["_parameters"]["weight"].shape)],
    }
