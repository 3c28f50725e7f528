"""Rebuild a YOLOv5-repository checkpoint (read as records, see ``focus_surgery.loader``) as an Ultralytics model.

Ultralytics' own parser builds the recorded ``Model.yaml`` (every YOLOv5 layer up to v7.0 has an Ultralytics twin
with the same state-dict names); where the twins differ the record wins: every torch leaf layer is rebuilt from its
recorded hyper-parameters (v2.0's LeakyReLU, v3's Hardswish), the head becomes a ``LegacyDetect`` with the recorded
anchors and strides, and every weight is loaded strictly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint_io import CheckpointError
from ..loader import Record, read_checkpoint
from ..loader.layers import check_hyperparameters, module_class
from ..loader.plain import PLAIN_BUDGET
from ..loader.plain import to_plain as _plain
from .detect import LegacyDetect
from .sizes import check_sizes

# YOLOv5 yaml layer names we let Ultralytics' parser build (it resolves names to callables, so only these)
KNOWN_LAYERS = frozenset(
    ("Focus", "Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "C3TR", "C3Ghost", "GhostConv", "GhostBottleneck")
    + ("SPP", "SPPF", "Concat", "nn.Upsample")
)
TORCH_ROWS = frozenset({"MaxPool2d", "Upsample", "ZeroPad2d", "Identity", "Dropout"})  # args passed as written
ACTIVATIONS = ("LeakyReLU", "SiLU", "Hardswish", "ReLU", "ReLU6", "Sigmoid", "Tanh", "Identity", "Mish", "GELU")
# Hyper-parameters of each torch leaf layer, as stored in its pickled __dict__ (constructor name: attribute name).
LEAF_ARGS: dict[str, tuple[str, ...]] = {
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "Upsample": ("size", "scale_factor", "mode", "align_corners"),
    "LeakyReLU": ("negative_slope", "inplace"),
    "ZeroPad2d": ("padding",),
    "Linear": ("in_features", "out_features"),  # C3TR's TransformerLayer
    "NonDynamicallyQuantizableLinear": ("in_features", "out_features"),  # nn.MultiheadAttention.out_proj
    "Dropout": ("p", "inplace"),
    **{name: ("inplace",) for name in ("SiLU", "Hardswish", "ReLU", "ReLU6", "Mish")},
    **{name: () for name in ("Sigmoid", "Tanh", "Identity", "GELU")},
}
_WITH_BIAS = ("Conv2d", "Linear", "NonDynamicallyQuantizableLinear")
_PLAIN_ATTRIBUTES_SKIPPED = {"training", "i", "f", "type", "np", "inplace"}
MAX_CLASSES = 100_000
MAX_ROW_NUMBER = 64  # kernel sizes, strides, scale factors in a yaml row's arguments
YAML_KEYS = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")  # all the parser is given


class NoUltralyticsCounterpart(CheckpointError):
    """A sound YOLOv5(-fork) model that an Ultralytics model cannot hold (YOLOv5-Lite's ``RepVGGBlock``, yolov5-face's
    landmarks, v1.0's plain-conv head, a Segment / Classify head); ``convert`` then converts its stem in the YOLOv5
    layout (``--layout yolov5``), every other record kept in place.

    Attributes:
        reason (str): Why, without the file name (for the report of the layout written instead).
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}; convert its stem in the YOLOv5 repository's own layout: --layout yolov5")
        self.reason = reason


@dataclass
class LegacyCheckpoint:
    """A YOLOv5-repository checkpoint read without running any of its code.

    Attributes:
        path (str): The file.
        content (dict): Its top-level dict (records in place of objects).
        model_key (str): ``"ema"`` when it holds an EMA model, else ``"model"``.
        metadata (dict): Training metadata (epoch, best_fitness, training_results, hyp, ...), JSON-friendly.
    """

    path: str
    content: dict
    model_key: str
    metadata: dict = field(default_factory=dict)

    @property
    def model(self) -> Record:
        return self.content[self.model_key]

    @property
    def detect(self) -> Record:
        return list(self.model.children()["model"].children().values())[-1]

    @property
    def dtype(self) -> torch.dtype:
        floats = [t.dtype for t in self.model.state_dict().values() if t.is_floating_point()]
        return floats[0] if floats else torch.float32


def read_yolov5_checkpoint(path: str | os.PathLike) -> LegacyCheckpoint:
    """Read a YOLOv5-repository ``.pt`` safely (``loader.read_checkpoint``) and find its model (``yolov5_checkpoint``).

    Raises:
        CheckpointError: Unreadable or hostile file, or one without a YOLOv5 ``models.yolo.Model``.
    """
    return yolov5_checkpoint(read_checkpoint(path).content, path)


def yolov5_checkpoint(content: Any, path: str | os.PathLike) -> LegacyCheckpoint:
    """The ``LegacyCheckpoint`` of content already read by the safe loader (records in place of objects).

    Raises:
        CheckpointError: No YOLOv5 ``models.yolo.Model`` inside, or one without its yaml architecture dict.
    """
    if isinstance(content, Record):  # torch.save(model) rather than a training dict
        content = {"model": content}
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a YOLOv5 checkpoint dict")
    key = next((k for k in ("ema", "model") if _is_yolov5_model(content.get(k))), None)
    if key is None:
        raise CheckpointError(f"{path}: no YOLOv5 models.yolo.Model inside (keys: {sorted(map(str, content))[:8]})")
    model = content[key]
    _check_class_counts(model, str(path))
    md = model.get("md")  # v1.0 kept the model dict under `md` (`yaml` may already be its alias: one dict)
    v1_md = isinstance(md, dict) and (not isinstance(model.get("yaml"), dict) or model.get("yaml") is md)
    if v1_md:
        model.state["yaml"] = md
    try:
        budget = [PLAIN_BUDGET]
        metadata = {str(k): _plain(v, budget) for k, v in content.items() if k not in ("model", "ema", "optimizer")}
        for attr in ("hyp", "gr", "yaml_file"):
            if model.get(attr) is not None:
                metadata[attr] = _plain(model.get(attr), budget)
        if isinstance(model.get("yaml"), dict):
            model.state["yaml"] = _plain(model.get("yaml"), [PLAIN_BUDGET])  # plain data from here on, bounded
        if v1_md:
            model.state["md"] = model.state["yaml"]  # one dict under both names, as the reader aliased it
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: metadata nested too deeply") from None
    metadata["source_key"] = key
    if "md" in model.state:
        metadata["yaml_key"] = "md"
    return LegacyCheckpoint(str(path), content, key, metadata)


def _check_class_counts(model: Record, path: str) -> None:
    """Every class count in the file is a sane integer, and a Detect head's convs have the channels it implies
    (``inspect`` lists one name per class: an ``nc`` of 1e9 in a few bytes must not make a billion)."""
    layers = list(model.children()["model"].children().values())
    head = layers[-1] if layers else None
    yaml = model.get("yaml") if isinstance(model.get("yaml"), dict) else {}
    counts = {"model.nc": model.get("nc"), "yaml nc": yaml.get("nc"), "head nc": head.get("nc") if head else None}
    for where, value in counts.items():
        if value is not None and not (_is_count(value) and 0 < value <= MAX_CLASSES):
            raise CheckpointError(f"{path}: {where} = {str(value)[:20]} is not a class count (1..{MAX_CLASSES})")
    if head is None or head.name != "Detect":
        return
    nc, na, no = head.get("nc"), head.get("na"), head.get("no")
    outputs = [c.get("out_channels") for c in (head.children().get("m") or head).children().values()]
    if not outputs:  # v1.0: the output convs are rows of their own (nn.Conv2d), its Detect holds none
        outputs = [r.get("out_channels") for r in layers[:-1] if r.qualname == "torch.nn.modules.conv.Conv2d"]
    if not _is_count(no):  # releases that do not record it: YOLOv5's 5 + nc
        no = nc + 5 if _is_count(nc) else None
    # forks add outputs per anchor (yolov5-face: 10 landmark coordinates, no = nc + 5 + 10)
    if not (_is_count(nc) and _is_count(na) and no >= nc + 5 and outputs and all(o == na * no for o in outputs)):
        raise CheckpointError(
            f"{path}: Detect has nc={str(nc)[:20]}, na={str(na)[:20]} and {str(no)[:20]} outputs per anchor, "
            f"which its output convs ({outputs[:3]} channels) do not match"
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_attribute(key: str) -> bool:
    return not key.startswith("_") and key not in _PLAIN_ATTRIBUTES_SKIPPED


def _is_torch(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn")


def _is_yolov5_model(obj: Any) -> bool:
    return isinstance(obj, Record) and obj.qualname.startswith("models.yolo.") and "model" in obj.children()


# ------------------------------------------------------------------------------------------------ leaf layers


def _spec(name: str, state: dict[str, Any], bias: bool) -> dict[str, Any]:
    args = {a: _plain(state[a]) for a in LEAF_ARGS[name] if a in state}
    if name in _WITH_BIAS:
        args["bias"] = bias
    return {"type": name, "args": args}


def leaf_spec(record: Record) -> dict[str, Any]:
    """JSON-friendly constructor spec of a recorded torch leaf layer: ``{"type": "Conv2d", "args": {...}}``."""
    if record.name not in LEAF_ARGS or not record.qualname.startswith("torch.nn.modules."):
        raise CheckpointError(f"layer type {record.qualname} is not supported")
    try:
        check_hyperparameters(module_class(record.qualname, Path(record.qualname)), record.state, record.qualname)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return _spec(record.name, record.state, (record.get("_parameters") or {}).get("bias") is not None)


def module_spec(module: nn.Module) -> dict[str, Any]:
    """The same spec for a live torch leaf layer."""
    name = type(module).__name__
    if name not in LEAF_ARGS:
        raise ValueError(f"layer type {name} is not supported")
    state = {a: getattr(module, a) for a in LEAF_ARGS[name] if hasattr(module, a)}
    return _spec(name, state, getattr(module, "bias", None) is not None)


def make_leaf(spec: dict[str, Any]) -> nn.Module:
    """Build a torch leaf layer from ``leaf_spec`` / ``module_spec`` output."""
    name, args = spec["type"], dict(spec["args"])
    if name not in LEAF_ARGS:
        raise CheckpointError(f"layer type {name} is not supported")
    for key in ("kernel_size", "stride", "padding", "dilation", "size", "scale_factor"):  # JSON lists back to tuples
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    if not LEAF_ARGS[name]:  # Sigmoid, Tanh, Identity, GELU: built with no arguments
        args = {}
    try:
        return (getattr(nn, name, None) or getattr(nn.modules.linear, name))(**args)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot build {name} from {args} ({error})") from None


# ------------------------------------------------------------------------------------------------ architecture


@dataclass
class LegacyArchitecture:
    """Everything needed to rebuild the model, JSON-serialisable (also the ``.json`` beside a ``.safetensors``).

    Attributes:
        yaml (dict): Layer graph for Ultralytics' parser, the Detect row left out.
        detect (dict): ``nc, anchors`` (pixels), ``ch``, ``stride``, ``anchor_grid_buffer``, ``i``, ``f``.
        leaves (dict): Spec of every torch leaf layer by path (``model.<i>....``).
        save (list[int]): Layers whose outputs later layers read.
        names (dict[int, str]): Class names.
        plain (dict): Plain attributes of composite layers that differ from Ultralytics' defaults, by path.
    """

    yaml: dict
    detect: dict
    leaves: dict
    save: list
    names: dict
    plain: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "names": {str(k): v for k, v in self.names.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> LegacyArchitecture:
        names = {int(k): v for k, v in data["names"].items()}
        return cls(data["yaml"], data["detect"], data["leaves"], data["save"], names, data.get("plain", {}))


def _check_rows(yaml: dict, path: str, detect_last: bool = True) -> None:
    """Refuse yaml rows whose layer name we do not know: Ultralytics' parser would call whatever it resolves to."""
    if not (isinstance(yaml, dict) and isinstance(yaml.get("backbone"), list) and isinstance(yaml.get("head"), list)):
        raise CheckpointError(f"{path}: the architecture has no backbone / head layer lists")
    rows = list(yaml["backbone"]) + list(yaml["head"])
    for i, row in enumerate(rows):
        if not (isinstance(row, (list, tuple)) and len(row) == 4 and isinstance(row[2], str)):
            raise CheckpointError(f"{path}: yaml row {i} is malformed ({str(row)[:60]})")
        f, n, name, args = row
        last = detect_last and i == len(rows) - 1
        if last and name != "Detect":
            raise NoUltralyticsCounterpart(path, f"the head is {name!r}, which has no Ultralytics counterpart here")
        if name == "nn.Conv2d":
            raise NoUltralyticsCounterpart(
                path,
                f"yaml layer {i} is 'nn.Conv2d' (v1.0's head: output convs as rows, Detect without convs), "
                "which has no Ultralytics counterpart",
            )
        torch_row = name.startswith("nn.") and name[3:] in TORCH_ROWS  # rows Ultralytics resolves and passes through
        if not last and name not in KNOWN_LAYERS and not torch_row:
            reason = f"yaml layer {i} is {name!r}, which has no supported Ultralytics counterpart"
            raise NoUltralyticsCounterpart(path, reason)
        if not (isinstance(n, int) and isinstance(args, list) and isinstance(f, (int, list))):
            raise CheckpointError(f"{path}: yaml row {i} is malformed ({str(row)[:60]})")


def _numbers_in(values: Any) -> list[float]:
    found: list[float] = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if isinstance(v, (list, tuple)):
            found += _numbers_in(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            found.append(v)
    return found


def check_scaling(yaml: dict, weights: dict[str, torch.Tensor], detect: dict, path: str) -> None:
    """Refuse multipliers, repeats, widths and class counts that the weights in the file do not have (the parser
    builds what the yaml says: a ``depth_multiple`` of 1e7 in a few bytes would make millions of blocks).

    Args:
        yaml (dict): Backbone and head rows (the Detect row left out), multipliers.
        weights (dict): The model's tensors by name (``model.<i>....``).
        detect (dict): ``nc``, ``anchors`` (one list per level) of the head.
    """
    gd, gw = yaml.get("depth_multiple", 1.0), yaml.get("width_multiple", 1.0)
    for key, value in (("depth_multiple", gd), ("width_multiple", gw)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 4:
            raise CheckpointError(f"{path}: yaml {key} = {value!r} is out of range (0, 4]")
    convs: dict[int, list[int]] = {}  # layer index: output channels of each conv (or linear) weight in it
    for key, tensor in weights.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "model" and parts[1].isdigit() and tensor.ndim in (2, 4):
            convs.setdefault(int(parts[1]), []).append(int(tensor.shape[0]))
    rows = list(yaml["backbone"]) + list(yaml["head"])
    for i, (_, n, name, args) in enumerate(rows):
        layer = convs.get(i, [])
        repeats = max(round(n * gd), 1) if n > 1 else n
        if repeats < 1 or (repeats > 1 and repeats > len(layer)):
            raise CheckpointError(
                f"{path}: yaml row {i} repeats its block {repeats} times; layer {i} has {len(layer)} convs"
            )
        channel_row = name != "Concat" and not name.startswith("nn.")  # torch rows' arguments are not channels
        if args and isinstance(args[0], int) and not isinstance(args[0], bool) and channel_row:
            width, most = math.ceil(args[0] * gw / 8) * 8, max(layer, default=0)
            if width > most:
                raise CheckpointError(f"{path}: yaml row {i} asks for {width} channels; layer {i} has at most {most}")
        if any(not math.isfinite(v) or abs(v) > MAX_ROW_NUMBER for v in _numbers_in(args[1:])):
            raise CheckpointError(f"{path}: yaml row {i} has an argument out of range ({str(args)[:60]})")
    nc, anchors, extra = detect.get("nc"), detect.get("anchors") or [], detect.get("extra", 0)
    outputs = convs.get(len(rows), [])
    per_level = len(anchors[0]) // 2 if anchors and isinstance(anchors[0], list) else 0
    if not _is_count(extra):  # a fork's outputs per anchor beyond 5 + nc (rebuilt for checks only)
        raise CheckpointError(f"{path}: the head's extra outputs per anchor ({str(extra)[:20]}) are not a count")
    per_anchor = nc + 5 + extra if isinstance(nc, int) else None
    fits = outputs and all(o == per_level * per_anchor for o in outputs)
    if not (isinstance(nc, int) and 0 < nc <= MAX_CLASSES and fits):
        raise CheckpointError(
            f"{path}: the head has nc={nc!r} and {per_level} anchors per level, which its output "
            f"convs ({outputs[:3]} channels) do not match"
        )


def legacy_architecture(ckpt: LegacyCheckpoint, extra_outputs: bool = False) -> LegacyArchitecture:
    """Read the architecture of a YOLOv5 checkpoint from its records (yaml, leaves, head, names).

    Args:
        extra_outputs (bool): Accept a fork's head with outputs per anchor beyond YOLOv5's ``5 + nc`` (landmarks,
            angles, keypoints): rebuilt as a ``LegacyDetect`` that returns its raw logits, for checks only.

    Raises:
        NoUltralyticsCounterpart: A layer or head an Ultralytics model cannot hold.
    """
    model, det = ckpt.model, ckpt.detect
    if not isinstance(model.get("yaml"), dict) or "backbone" not in model.get("yaml"):
        raise NoUltralyticsCounterpart(
            ckpt.path, "the YOLOv5 model has no yaml architecture dict, so no Ultralytics model can be rebuilt"
        )
    yaml = copy.deepcopy(model.get("yaml"))
    _check_rows(yaml, ckpt.path)
    if det.name != "Detect":
        raise NoUltralyticsCounterpart(ckpt.path, f"the last layer is {det.qualname}, not Detect")
    buffers = det.get("_buffers") or {}
    stride = [float(s) for s in torch.as_tensor(det.get("stride")).flatten().tolist()]
    if "anchor_grid" in buffers:  # v1.0-v5.0: pixel anchors kept as a buffer
        anchors = buffers["anchor_grid"].float().reshape(len(stride), -1).tolist()
    else:  # v6.0+: grid-unit anchors times stride
        anchors = (buffers["anchors"].float() * torch.tensor(stride).view(-1, 1, 1)).reshape(len(stride), -1).tolist()
    ch = [int(c.get("in_channels")) for c in det.children()["m"].children().values()]
    names = model.get("names") or [str(i) for i in range(int(model.get("nc") or yaml.get("nc")))]
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else {int(k): v for k, v in names.items()}
    nc = int(det.get("nc"))
    no = det.get("no") if isinstance(det.get("no"), int) else nc + 5
    if no != nc + 5 and not extra_outputs:
        raise NoUltralyticsCounterpart(
            ckpt.path,
            f"its Detect has {no} outputs per anchor, {no - nc - 5} beyond YOLOv5's 5 + nc (a fork's landmarks, "
            "angles or keypoints), which an Ultralytics model cannot hold",
        )
    detect = dict(nc=nc, anchors=anchors, ch=ch, stride=stride, anchor_grid_buffer="anchor_grid" in buffers)
    detect.update(i=det.get("i"), f=det.get("f"))
    if no != nc + 5:
        detect["extra"] = no - nc - 5
    yaml["nc"] = nc
    yaml.pop("activation", None)  # rebuilt from the recorded layers; never evaluated
    yaml["head"] = yaml["head"][:-1]
    plain, leaves = {}, {}  # composite layers' plain attributes; every torch leaf layer's spec, by path
    for path, record in model.named_modules():
        values = {k: v for k, v in record.state.items() if isinstance(v, (bool, int, float)) and _plain_attribute(k)}
        if path and values and record.qualname.startswith("models.common."):
            plain[path] = values
        if path and not record.children() and record.qualname.startswith("torch.nn.modules."):
            try:
                leaves[path] = leaf_spec(record)
            except CheckpointError as error:
                raise CheckpointError(f"{ckpt.path}: layer {path}: {error}") from None
    return LegacyArchitecture(yaml, detect, leaves, sorted(model.get("save") or []), names, plain)


def build_model(arch: LegacyArchitecture, weights: dict[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Build the Ultralytics ``DetectionModel`` (float32, eval mode, random weights) for ``arch``.

    Raises:
        CheckpointError: A layer that Ultralytics builds differently from the recorded one in a way we cannot fix.
    """
    import contextlib
    import io

    from ultralytics.nn.tasks import DetectionModel

    _check_rows(arch.yaml, source, detect_last=False)  # also when the architecture comes from a JSON file
    check_scaling(arch.yaml, weights, arch.detect, source)  # before the parser builds anything
    check_sizes(arch, weights, source, make_leaf)  # head channels and leaf shapes: no layer larger than its weights
    yaml = {k: copy.deepcopy(arch.yaml[k]) for k in YAML_KEYS if k in arch.yaml}  # no `activation` string to eval
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = DetectionModel(yaml, ch=3, nc=arch.detect["nc"], verbose=False)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"{source}: Ultralytics cannot build this architecture ({error})") from None
    d = arch.detect
    head = LegacyDetect(d["nc"], d["anchors"], d["ch"], d["stride"], d["anchor_grid_buffer"], d.get("extra", 0))
    head.i, head.f = d["i"], d["f"]
    head.type = f"{LegacyDetect.__module__}.LegacyDetect"
    head.np = sum(p.numel() for p in head.parameters())
    model.model.append(head)
    # Torch leaf layers exactly as recorded (activation per release, conv geometry, pooling, norms)
    built = {p for p, m in model.named_modules() if p and not list(m.children()) and _is_torch(m)}
    for path, spec in arch.leaves.items():
        try:
            old = model.get_submodule(path)
        except AttributeError:
            raise CheckpointError(
                f"{source}: layer {path} ({spec['type']}) has no counterpart in the rebuilt model"
            ) from None
        new = make_leaf(spec)
        for attr in ("i", "f", "type", "np"):  # Ultralytics routing of a top-level row (nn.Upsample)
            if attr in vars(old):  # vars: every module has a .type() method
                setattr(new, attr, vars(old)[attr])
        parent, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, name, new)
    extra = sorted(p for p in built - set(arch.leaves) if not isinstance(model.get_submodule(p), nn.Identity))
    if extra:
        raise CheckpointError(f"{source}: the rebuilt model has layers the checkpoint lacks (e.g. {extra[0]})")
    for path, values in arch.plain.items():  # e.g. Bottleneck.add, Concat.d
        module = model.get_submodule(path)
        for key, value in values.items():
            current = getattr(module, key, None)
            if not key.startswith("_") and isinstance(current, (bool, int, float)) and isinstance(value, type(current)):
                setattr(module, key, value)
    model.save, model.stride, model.names = list(arch.save), head.stride.clone(), dict(arch.names)
    # "nc" / "anchors" name the top-level keys, so a rebuild from the YAML (Ultralytics does that to train) follows a
    # new class count, and the anchors are the checkpoint's own (autoanchor may have changed them in training)
    model.yaml["nc"], model.yaml["anchors"] = d["nc"], copy.deepcopy(d["anchors"])
    model.yaml["head"] = list(model.yaml["head"]) + [[d["f"], 1, "LegacyDetect", ["nc", "anchors"]]]
    return model.float().eval()


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy every tensor into ``model``, strictly: no key missing, none left over, same shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unused = [k for k in state_dict if k not in own]
    if missing or unused:
        raise CheckpointError(
            f"{source}: weights do not fit the rebuilt model ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unused)} unused, e.g. {unused[:2]})"
        )
    for key, tensor in state_dict.items():
        if own[key].shape != tensor.shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected {tuple(own[key].shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()}, strict=True)


def rebuild(ckpt: LegacyCheckpoint, extra_outputs: bool = False) -> tuple[nn.Module, LegacyArchitecture]:
    """The Ultralytics ``DetectionModel`` equivalent to the checkpoint's YOLOv5 model (float32, eval), and its arch
    (``extra_outputs``: see ``legacy_architecture``)."""
    arch = legacy_architecture(ckpt, extra_outputs)
    weights = ckpt.model.state_dict()
    model = build_model(arch, weights, ckpt.path)
    load_weights(model, weights, ckpt.path)
    return model, arch


def guess_release(ckpt: LegacyCheckpoint) -> str:
    """The YOLOv5 release that most likely wrote the file, from layer types, activations and head buffers."""
    layers = {r.name for _, r in ckpt.model.named_modules()}
    conv_blocks = [r for _, r in ckpt.model.named_modules() if r.name == "Conv" and "act" in r.children()]
    acts = {b.children()["act"].name for b in conv_blocks}  # the Conv blocks' activation changed per release
    yaml_file = str(ckpt.model.get("yaml_file") or "")
    first = (ckpt.model.get("yaml") or {}).get("backbone", [[None] * 4])[0]
    if Path(yaml_file).name.startswith("yolov3") and "hub" not in Path(yaml_file).parts:
        return "yolov3 repository (v9.x)"
    if not yaml_file and first[2] == "Conv" and len(first[3]) > 2 and first[3][2] == 1:
        return "a YOLOv3 architecture (yolov3 repository v9.x, or YOLOv5's hub yolov3)"
    if ckpt.metadata.get("yaml_key") == "md":
        return "v1.0"
    if "anchor_grid" not in (ckpt.detect.get("_buffers") or {}):
        return "v6.0-v7.0" if "Focus" not in layers else "v6.0-v7.0 (with a Focus stem)"
    for act, release in (("SiLU", "v4.0-v5.0"), ("Hardswish", "v3.0-v3.1")):
        if act in acts:
            return release
    if "LeakyReLU" in acts:
        v2 = "giou" in (ckpt.model.get("hyp") or {}) or ckpt.detect.get("export") is not None
        return "v2.0" if v2 else "v1.0-v2.0"
    return "unknown (v1.0-v5.0 layout)"


def describe(ckpt: LegacyCheckpoint) -> dict[str, Any]:
    """Summary for ``inspect``: release, architecture, stem, nc, names, anchors, dtype, training metadata."""
    model, det = ckpt.model, ckpt.detect
    layers = list(model.children()["model"].children().values())
    stem = layers[0]
    stem_act = next((r.name for _, r in stem.named_modules() if r.name in ACTIVATIONS), None)
    stem_conv = next((r for _, r in stem.named_modules() if r.name == "Conv2d"), None)
    if stem_conv is None:
        raise CheckpointError(f"{ckpt.path}: layer 0 ({stem.qualname}) holds no conv; not a YOLOv5 stem")
    yaml = model.get("yaml") or {}
    counts = dict(Counter(layer.name for layer in layers))
    buffers = ("running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid")
    params = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith(buffers))
    arch_error, own_layout, anchors = None, None, None
    try:
        anchors = legacy_architecture(ckpt).detect["anchors"]
    except NoUltralyticsCounterpart as error:  # converts by default in the YOLOv5 layout
        own_layout = error.reason
    except CheckpointError as error:
        arch_error = str(error)
    k = stem_conv.get("kernel_size")
    focus = stem.name == "Focus"
    to_conv = f"Focus -> Conv(k={2 * k[0]}, s=2, p={2 * (k[0] // 2)}), exact"
    if focus:
        stem_text = f"Focus (space-to-depth + {k[0]}x{k[1]} conv, {stem_conv.get('out_channels')} channels)"
    else:
        stem_text = f"{stem.name} ({k[0]}x{k[1]}, stride {stem_conv.get('stride')[0]})"
    if arch_error:
        converts = f"no: {arch_error}"
    elif own_layout and focus:
        converts = f"yes, in the YOLOv5 repository's own layout ({own_layout}): {to_conv}, every other layer kept"
    elif own_layout:
        converts = f"to a Focus only (--to focus), in the YOLOv5 repository's own layout ({own_layout})"
    elif focus:
        converts = f"yes: {to_conv}; or kept as Focus (--to focus)"
    else:
        converts = "yes: to an Ultralytics model (stem already a strided conv; --to focus makes it a Focus)"
    names = model.get("names") or []
    best = ckpt.metadata.get("best_fitness")
    stride = det.get("stride")
    return {
        "path": ckpt.path,
        "format": "yolov5-repository checkpoint",
        "release": guess_release(ckpt),
        "model_key": ckpt.model_key,
        "layers": len(layers),
        "layer_types": counts,
        "depth_multiple": yaml.get("depth_multiple"),
        "width_multiple": yaml.get("width_multiple"),
        "parameters": params,
        "stem": stem_text,
        "stem_activation": stem_act,
        "nc": det.get("nc") if det.get("nc") is not None else model.get("nc"),  # a Classify head keeps none
        "names": list(names.values()) if isinstance(names, dict) else list(names),
        "anchors": anchors,
        "stride": None if stride is None else [float(s) for s in torch.as_tensor(stride).flatten().tolist()],
        "dtype": str(ckpt.dtype).replace("torch.", ""),
        "epoch": ckpt.metadata.get("epoch"),
        "best_fitness": best[0] if isinstance(best, list) and len(best) == 1 else best,
        "converts": converts,
    }
