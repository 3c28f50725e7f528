"""Rebuild a YOLOv5-repository checkpoint (read as records, see ``unpickler``) as an Ultralytics model.

The recorded ``Model.yaml`` gives the layer graph; Ultralytics' own parser builds it (every YOLOv5 layer up to
v7.0 has an Ultralytics twin with the same state-dict names). Where the twins differ in details, the record wins:
every torch leaf layer (convs, norms, activations, pools, upsamples) is rebuilt from the recorded hyper-parameters
(so a v2.0 LeakyReLU, a v3 Hardswish or a 1x1 conv inside BottleneckCSP come back as they were), the head becomes a
``LegacyDetect`` with the recorded anchors and strides, and every weight is loaded strictly.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint_io import CheckpointError
from .detect import LegacyDetect
from .unpickler import LegacyRecord, load_legacy_pickle

# YOLOv5 yaml layer names we let Ultralytics' parser build (its parser resolves names to callables, so only these).
KNOWN_LAYERS = frozenset(
    {"Focus", "Conv", "DWConv", "Bottleneck", "BottleneckCSP", "C3", "C3TR", "C3Ghost", "GhostConv",
     "GhostBottleneck", "SPP", "SPPF", "Concat", "nn.Upsample"}
)  # fmt: skip
ACTIVATIONS = ("LeakyReLU", "SiLU", "Hardswish", "ReLU", "ReLU6", "Sigmoid", "Tanh", "Identity", "Mish", "GELU")
# Hyper-parameters of each torch leaf layer, as stored in its pickled __dict__ (constructor name: attribute name).
LEAF_ARGS: dict[str, tuple[str, ...]] = {
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    "Upsample": ("size", "scale_factor", "mode", "align_corners"),
    "LeakyReLU": ("negative_slope", "inplace"),
    **{name: ("inplace",) for name in ("SiLU", "Hardswish", "ReLU", "ReLU6", "Mish")},
    **{name: () for name in ("Sigmoid", "Tanh", "Identity", "GELU")},
}
_PLAIN_ATTRIBUTES_SKIPPED = {"training", "i", "f", "type", "np", "inplace"}


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
    def model(self) -> LegacyRecord:
        return self.content[self.model_key]

    @property
    def detect(self) -> LegacyRecord:
        return list(self.model.children()["model"].children().values())[-1]

    @property
    def dtype(self) -> torch.dtype:
        floats = [t.dtype for t in self.model.state_dict().values() if t.is_floating_point()]
        return floats[0] if floats else torch.float32


def _plain(value: Any) -> Any:
    """JSON-friendly copy of metadata (numpy and tensors become numbers / lists)."""
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        value = value.tolist()
    if value is None or isinstance(value, (float, int, str, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)[:200]


def read_yolov5_checkpoint(path: str | os.PathLike) -> LegacyCheckpoint:
    """Read a YOLOv5-repository ``.pt`` safely (see ``load_legacy_pickle``) and find its model.

    Raises:
        CheckpointError: Unreadable or hostile file, or one without a YOLOv5 ``models.yolo.Model``.
    """
    content = load_legacy_pickle(path)
    if isinstance(content, LegacyRecord):  # torch.save(model) rather than a training dict
        content = {"model": content}
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a YOLOv5 checkpoint dict")
    key = next((k for k in ("ema", "model") if _is_yolov5_model(content.get(k))), None)
    if key is None:
        raise CheckpointError(f"{path}: no YOLOv5 models.yolo.Model inside (keys: {sorted(map(str, content))[:8]})")
    model = content[key]
    if not isinstance(model.get("yaml"), dict) or "backbone" not in model.get("yaml"):
        raise CheckpointError(f"{path}: the YOLOv5 model has no yaml architecture dict; cannot rebuild it")
    metadata = {k: _plain(v) for k, v in content.items() if k not in ("model", "ema", "optimizer")}
    for attr in ("hyp", "gr", "yaml_file"):
        if model.get(attr) is not None:
            metadata[attr] = _plain(model.get(attr))
    metadata["source_key"] = key
    return LegacyCheckpoint(str(path), content, key, metadata)


def _is_yolov5_model(obj: Any) -> bool:
    return isinstance(obj, LegacyRecord) and obj.qualname.startswith("models.yolo.") and "model" in obj.children()


# ------------------------------------------------------------------------------------------------ leaf layers


def leaf_spec(record: LegacyRecord) -> dict[str, Any]:
    """JSON-friendly constructor spec of a recorded torch leaf layer: ``{"type": "Conv2d", "args": {...}}``."""
    name = record.name
    if name not in LEAF_ARGS or not record.qualname.startswith("torch.nn.modules."):
        raise CheckpointError(f"layer type {record.qualname} is not supported")
    args = {a: _plain(record.get(a)) for a in LEAF_ARGS[name] if a in record.state}
    if name == "Conv2d":
        args["bias"] = (record.get("_parameters") or {}).get("bias") is not None
    return {"type": name, "args": args}


def module_spec(module: nn.Module) -> dict[str, Any]:
    """The same spec for a live torch leaf layer."""
    name = type(module).__name__
    if name not in LEAF_ARGS:
        raise ValueError(f"layer type {name} is not supported")
    args = {a: _plain(getattr(module, a)) for a in LEAF_ARGS[name] if hasattr(module, a)}
    if name == "Conv2d":
        args["bias"] = module.bias is not None
    return {"type": name, "args": args}


def make_leaf(spec: dict[str, Any]) -> nn.Module:
    """Build a torch leaf layer from ``leaf_spec`` / ``module_spec`` output."""
    name, args = spec["type"], dict(spec["args"])
    if name not in LEAF_ARGS:
        raise CheckpointError(f"layer type {name} is not supported")
    for key in ("kernel_size", "stride", "padding", "dilation", "size"):
        if isinstance(args.get(key), list):
            args[key] = tuple(args[key])
    if name == "Upsample" and isinstance(args.get("scale_factor"), list):
        args["scale_factor"] = tuple(args["scale_factor"])
    if name in ("Sigmoid", "Tanh", "Identity", "GELU"):
        args = {}
    try:
        return getattr(nn, name)(**args)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"cannot build {name} from {args} ({error})") from None


def _record_leaves(model: LegacyRecord) -> dict[str, dict[str, Any]]:
    """Spec of every torch leaf layer under the recorded ``Model``, by path (``model.0.conv.conv``, ...)."""
    leaves = {}
    for path, record in model.named_modules():
        if path and not record.children() and record.qualname.startswith("torch.nn.modules."):
            leaves[path] = leaf_spec(record)
    return leaves


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
        return {"yaml": self.yaml, "detect": self.detect, "leaves": self.leaves, "save": self.save,
                "names": {str(k): v for k, v in self.names.items()}, "plain": self.plain}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> LegacyArchitecture:
        names = {int(k): v for k, v in data["names"].items()}
        return cls(data["yaml"], data["detect"], data["leaves"], data["save"], names, data.get("plain", {}))


YAML_KEYS = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")  # all the parser is given


def _check_rows(yaml: dict, path: str, detect_last: bool = True) -> None:
    """Refuse yaml rows whose layer name we do not know: Ultralytics' parser would call whatever the name resolves to."""
    if (
        not isinstance(yaml, dict)
        or not isinstance(yaml.get("backbone"), list)
        or not isinstance(yaml.get("head"), list)
    ):
        raise CheckpointError(f"{path}: the architecture has no backbone / head layer lists")
    rows = list(yaml["backbone"]) + list(yaml["head"])
    for i, row in enumerate(rows):
        ok = isinstance(row, (list, tuple)) and len(row) == 4 and isinstance(row[2], str)
        if not ok:
            raise CheckpointError(f"{path}: yaml row {i} is malformed ({str(row)[:60]})")
        f, n, name, args = row
        last = detect_last and i == len(rows) - 1
        if last and name != "Detect":
            raise CheckpointError(f"{path}: last layer is {name!r}, not Detect; only YOLOv5 detection models convert")
        if not last and name not in KNOWN_LAYERS:
            raise CheckpointError(f"{path}: yaml layer {i} is {name!r}, which has no supported Ultralytics counterpart")
        if not (isinstance(n, int) and isinstance(args, list) and (isinstance(f, (int, list)))):
            raise CheckpointError(f"{path}: yaml row {i} is malformed ({str(row)[:60]})")


def legacy_architecture(ckpt: LegacyCheckpoint) -> LegacyArchitecture:
    """Read the architecture of a YOLOv5 checkpoint from its records (yaml, leaves, head, names)."""
    model, det = ckpt.model, ckpt.detect
    yaml = copy.deepcopy(model.get("yaml"))
    _check_rows(yaml, ckpt.path)
    if det.name != "Detect":
        raise CheckpointError(f"{ckpt.path}: last layer is {det.qualname}, not Detect")
    buffers = det.get("_buffers") or {}
    stride = [float(s) for s in torch.as_tensor(det.get("stride")).flatten().tolist()]
    if "anchor_grid" in buffers:  # v1.0-v5.0: pixel anchors kept as a buffer
        anchors = buffers["anchor_grid"].float().reshape(len(stride), -1).tolist()
    else:  # v6.0+: grid-unit anchors times stride
        anchors = (buffers["anchors"].float() * torch.tensor(stride).view(-1, 1, 1)).reshape(len(stride), -1).tolist()
    convs = det.children()["m"].children()
    ch = [int(c.get("in_channels")) for c in convs.values()]
    names = model.get("names") or [str(i) for i in range(int(model.get("nc") or yaml.get("nc")))]
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else {int(k): v for k, v in names.items()}
    nc = int(det.get("nc"))
    detect = {"nc": nc, "anchors": anchors, "ch": ch, "stride": stride, "anchor_grid_buffer": "anchor_grid" in buffers,
              "i": det.get("i"), "f": det.get("f")}  # fmt: skip
    yaml["nc"] = nc
    yaml.pop("activation", None)  # rebuilt from the recorded layers; never evaluated
    yaml["head"] = yaml["head"][:-1]
    plain = {}
    for path, record in model.named_modules():
        if record.qualname.startswith("models.common.") and path:
            values = {k: v for k, v in record.state.items() if not k.startswith("_") and k not in _PLAIN_ATTRIBUTES_SKIPPED
                      and isinstance(v, (bool, int, float))}  # fmt: skip
            if values:
                plain[path] = values
    return LegacyArchitecture(yaml, detect, _record_leaves(model), sorted(model.get("save") or []), names, plain)


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def build_model(arch: LegacyArchitecture, source: str = "checkpoint") -> nn.Module:
    """Build the Ultralytics ``DetectionModel`` (float32, eval mode, random weights) for ``arch``.

    Raises:
        CheckpointError: A layer that Ultralytics builds differently from the recorded one in a way we cannot fix.
    """
    import contextlib
    import io

    from ultralytics.nn.tasks import DetectionModel

    _check_rows(arch.yaml, source, detect_last=False)  # also when the architecture comes from a JSON file
    yaml = {k: copy.deepcopy(arch.yaml[k]) for k in YAML_KEYS if k in arch.yaml}  # no `activation` string to eval
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = DetectionModel(yaml, ch=3, nc=arch.detect["nc"], verbose=False)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"{source}: Ultralytics cannot build this architecture ({error})") from None
    d = arch.detect
    head = LegacyDetect(d["nc"], d["anchors"], d["ch"], d["stride"], d["anchor_grid_buffer"])
    head.i, head.f = d["i"], d["f"]
    head.type = f"{LegacyDetect.__module__}.LegacyDetect"
    head.np = sum(p.numel() for p in head.parameters())
    model.model.append(head)
    # Torch leaf layers exactly as recorded (activation per release, conv geometry, pooling, norms)
    built = {
        p
        for p, m in model.named_modules()
        if p and not list(m.children()) and type(m).__module__.startswith("torch.nn")
    }
    for path, spec in arch.leaves.items():
        try:
            model.get_submodule(path)
        except AttributeError:
            raise CheckpointError(
                f"{source}: layer {path} ({spec['type']}) has no counterpart in the rebuilt model"
            ) from None
        old, new = model.get_submodule(path), make_leaf(spec)
        for attr in ("i", "f", "type", "np"):  # Ultralytics routing of a top-level row (nn.Upsample)
            if attr in vars(old):  # vars: every module has a .type() method
                setattr(new, attr, vars(old)[attr])
        _set_submodule(model, path, new)
    extra = sorted(p for p in built - set(arch.leaves) if not isinstance(model.get_submodule(p), nn.Identity))
    if extra:
        raise CheckpointError(f"{source}: the rebuilt model has layers the checkpoint lacks (e.g. {extra[0]})")
    for path, values in arch.plain.items():  # e.g. Bottleneck.add, Concat.d
        module = model.get_submodule(path)
        for key, value in values.items():
            current = getattr(module, key, None)
            if not key.startswith("_") and isinstance(current, (bool, int, float)) and isinstance(value, type(current)):
                setattr(module, key, value)
    model.save = list(arch.save)
    model.stride = head.stride.clone()
    model.names = dict(arch.names)
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


def rebuild(ckpt: LegacyCheckpoint) -> tuple[nn.Module, LegacyArchitecture]:
    """The Ultralytics ``DetectionModel`` equivalent to the checkpoint's YOLOv5 model (float32, eval), and its arch."""
    arch = legacy_architecture(ckpt)
    model = build_model(arch, ckpt.path)
    load_weights(model, ckpt.model.state_dict(), ckpt.path)
    return model, arch


def guess_release(ckpt: LegacyCheckpoint) -> str:
    """The YOLOv5 release that most likely wrote the file, from layer types, activations and head buffers."""
    layers = {r.name for _, r in ckpt.model.named_modules()}
    conv_blocks = [r for _, r in ckpt.model.named_modules() if r.name == "Conv" and "act" in r.children()]
    acts = {b.children()["act"].name for b in conv_blocks}  # the Conv blocks' activation changed per release
    has_grid_buffer = "anchor_grid" in (ckpt.detect.get("_buffers") or {})
    hyp = ckpt.model.get("hyp") or {}
    if not has_grid_buffer:
        return "v6.0-v7.0" if "Focus" not in layers else "v6.0-v7.0 (with a Focus stem)"
    if "SiLU" in acts:
        return "v4.0-v5.0"
    if "Hardswish" in acts:
        return "v3.0-v3.1"
    if "LeakyReLU" in acts:
        return "v2.0" if "giou" in hyp or ckpt.detect.get("export") is not None else "v1.0-v2.0"
    return "unknown (v1.0-v5.0 layout)"


def describe(ckpt: LegacyCheckpoint) -> dict[str, Any]:
    """Summary for ``inspect``: release, architecture, stem, nc, names, anchors, dtype, training metadata."""
    model, det = ckpt.model, ckpt.detect
    layers = list(model.children()["model"].children().values())
    stem = layers[0]
    stem_act = next((r.name for _, r in stem.named_modules() if r.name in ACTIVATIONS), None)
    stem_conv = next(r for _, r in stem.named_modules() if r.name == "Conv2d")
    yaml = model.get("yaml") or {}
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    params = sum(
        t.numel()
        for k, t in model.state_dict().items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked", "anchors", "anchor_grid"))
    )
    arch_error = None
    try:
        arch = legacy_architecture(ckpt)
        anchors = arch.detect["anchors"]
    except CheckpointError as error:
        arch_error, anchors = str(error), None
    k = stem_conv.get("kernel_size")
    if stem.name == "Focus":
        stem_text = f"Focus (space-to-depth + {k[0]}x{k[1]} conv, {stem_conv.get('out_channels')} channels)"
    else:
        stem_text = f"{stem.name} ({k[0]}x{k[1]}, stride {stem_conv.get('stride')[0]})"
    if arch_error:
        converts = f"no: {arch_error}"
    elif stem.name == "Focus":
        converts = f"yes: Focus -> Conv(k={2 * k[0]}, s=2, p={2 * (k[0] // 2)}), exact; or kept as Focus (--to focus)"
    else:
        converts = "yes: to an Ultralytics model (stem already a strided conv; --to focus makes it a Focus)"
    names = model.get("names") or []
    names = list(names.values()) if isinstance(names, dict) else list(names)
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
        "nc": int(det.get("nc")),
        "names": names,
        "anchors": anchors,
        "stride": [float(s) for s in torch.as_tensor(det.get("stride")).flatten().tolist()],
        "dtype": str(ckpt.dtype).replace("torch.", ""),
        "epoch": ckpt.metadata.get("epoch"),
        "best_fitness": _first(ckpt.metadata.get("best_fitness")),
        "converts": converts,
    }


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value
