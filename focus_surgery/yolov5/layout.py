"""The way back: an Ultralytics model of YOLOv5 architecture (a ``LegacyDetect`` head) as the YOLOv5 repository's
own code pickles it, for the release it came from (``convert --layout yolov5`` of an Ultralytics file).

The inverse of ``rebuild.py``: torch layers and tensors are kept as they are; each Ultralytics class becomes its
YOLOv5 twin of the same name and children (``models.common.C3``) with the plain attributes that class sets, the head
``models.yolo.Detect`` as its release's ``Detect.__init__`` and ``Model.__init__`` leave it, the model
``models.yolo.Model`` (``DetectionModel`` from v6.2) with YOLOv5's YAML, in a dict with the keys the release's
``train.py`` writes (which ``release.exact_release`` reads back). The result is records (``loader.Record``) that
``sources.records_io`` pickles under those names. A range (``"v6.0-v7.0"``) is written as its oldest release,
whose classes every release of the range loads.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import ConversionError
from ..loader import Record, record_class
from .detect import LegacyDetect
from .hyp import HYP_KEY, recorded_release  # noqa: F401  (recorded_release: read by sources.yolov5_layout)
from .loss_rules import rules_release
from .rebuild import YAML_KEYS

RELEASES = ("v2.0", "v3.0", "v3.1", "v4.0", "v5.0", "v6.0", "v6.1", "v6.2", "v7.0")
_V2 = ("Conv", "Bottleneck", "BottleneckCSP", "SPP", "Focus", "Concat")
_V5 = (*_V2, "C3", "C3TR", "TransformerBlock", "TransformerLayer")
_V6 = (*_V5, "DWConv", "C3Ghost", "SPPF", "GhostConv", "GhostBottleneck")
# The classes of each release's models/common.py that have an Ultralytics twin (read from the sources at the tags)
LAYERS: dict[str, tuple[str, ...]] = {
    "v2.0": _V2,
    "v3.0": _V2,
    "v3.1": _V2,
    "v4.0": (*_V2, "C3"),
    "v5.0": _V5,
    **{r: _V6 for r in ("v6.0", "v6.1", "v6.2", "v7.0")},
}
# The children each YOLOv5 class makes (its forward reads them by these names); Ultralytics' twins make the same
CHILDREN: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("Conv", "DWConv"), ("conv", "bn", "act")),
    **dict.fromkeys(("Bottleneck", "GhostConv"), ("cv1", "cv2")),
    **dict.fromkeys(("C3", "C3TR", "C3Ghost"), ("cv1", "cv2", "cv3", "m")),
    **dict.fromkeys(("SPP", "SPPF"), ("cv1", "cv2", "m")),
    "BottleneckCSP": ("cv1", "cv2", "cv3", "cv4", "bn", "act", "m"),
    "Focus": ("conv",),
    "Concat": (),
    "GhostBottleneck": ("conv", "shortcut"),
    "TransformerBlock": ("conv", "linear", "tr"),
    "TransformerLayer": ("q", "k", "v", "ma", "fc1", "fc2"),
}
# Plain attributes the YOLOv5 class sets in __init__ (TransformerBlock keeps ``conv = None`` when c1 == c2)
PLAIN: dict[str, tuple[str, ...]] = {"Bottleneck": ("add",), "Concat": ("d",), "TransformerBlock": ("c2", "conv")}
# Ultralytics attributes that YOLOv5's class has fixed: any other value computes something else
FIXED: dict[str, dict[str, Any]] = {"SPPF": {"n": 3, "add": False}}
ROUTING = ("i", "f", "type", "np")  # what parse_model sets on every row
_TRAIN_KEYS = ("epoch", "best_fitness", "training_results", "model", "optimizer")
CHECKPOINT_KEYS: dict[str, tuple[str, ...]] = {
    "v2.0": _TRAIN_KEYS,
    "v3.0": _TRAIN_KEYS,
    "v3.1": _TRAIN_KEYS,
    "v4.0": (*_TRAIN_KEYS, "wandb_id"),
    "v5.0": ("epoch", "best_fitness", "training_results", "model", "ema", "updates", "optimizer", "wandb_id"),
    "v6.0": ("epoch", "best_fitness", "model", "ema", "updates", "optimizer", "wandb_id"),
    "v6.1": ("epoch", "best_fitness", "model", "ema", "updates", "optimizer", "wandb_id", "date"),
    "v6.2": ("epoch", "best_fitness", "model", "ema", "updates", "optimizer", "wandb_id", "opt", "date"),
    "v7.0": ("epoch", "best_fitness", "model", "ema", "updates", "optimizer", "opt", "git", "date"),
}
# release ranges read from a file's layers (rebuild.guess_release): written as their oldest release
RANGES = {"v1.0-v2.0": "v2.0", "v3.0-v3.1": "v3.0", "v4.0-v5.0": "v4.0", "v6.0-v7.0": "v6.0", "master": "v7.0"}


def _since(release: str, tag: str) -> bool:
    return RELEASES.index(release) >= RELEASES.index(tag)


def target_release(recorded: Any) -> tuple[str, str]:
    """The release to write for the release a model records (``model.yaml["yolov5_release"]``), and a note.

    Raises:
        ConversionError: A release this layout cannot be written for (v1.0, a YOLOv3 repository model).
    """
    if recorded is None:
        return "v7.0", "no YOLOv5 release recorded in the model: written for v7.0"
    text = str(recorded)
    if text in RELEASES:
        return text, ""
    for prefix, release in RANGES.items():
        if text.startswith(prefix):
            note = f"release known as {text}: written as {release}, which every release of the range loads"
            trained = rules_release(text)  # a range trains with its newest release's loss rules
            if trained != release:  # the written file reads back as `release` exactly, with that release's rules
                note += f"; read back, it trains with {release}'s loss rules, not {trained}'s"
            return release, note
    raise ConversionError(
        f"the model records YOLOv5 release {text[:60]!r}; --layout yolov5 writes {', '.join(RELEASES)}"
    )


def _record(qualname: str, module: nn.Module, children: dict[str, Any]) -> Record:
    """A record of ``qualname`` whose state is ``module``'s pickled ``__dict__`` (torch's own keys), with
    ``children`` as its submodules."""
    record = record_class(qualname)()
    record.state.update(nn.Module().__dict__)
    record.state.update(
        training=module.training,
        _parameters=OrderedDict(module._parameters),
        _buffers=OrderedDict(module._buffers),
        _non_persistent_buffers_set=set(module._non_persistent_buffers_set),
        _modules=OrderedDict(children),
    )
    return record


def _routing(module: nn.Module, qualname: str) -> dict[str, Any]:
    """``i, f, type, np`` of a top-level row, ``type`` named as YOLOv5's parse_model names it."""
    own = {k: v for k, v in vars(module).items() if k in ROUTING}
    if "type" in own:
        own["type"] = qualname
    return own


def _is_torch(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn.")


def _foreign(value: Any) -> str | None:
    """The first class or function in ``value`` (nested containers included) that is neither builtin nor torch's,
    as ``module.qualname``; None when there is none. A torch layer pickled as it is carries all of its ``__dict__``;
    a stand-in the safe loader read (a record, a namespace, a reference) is named as the file named it."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.Tensor)):
        return None
    if type(value) in (dict, OrderedDict):
        return next(filter(None, (_foreign(v) for kv in value.items() for v in kv)), None)
    if type(value) in (list, tuple, set, frozenset):
        return next(filter(None, map(_foreign, value)), None)
    stand_in = getattr(value, "qualname", None) if type(value).__module__.startswith("focus_surgery.loader") else None
    if isinstance(stand_in, str):
        name = stand_in
    else:
        kind = value if isinstance(value, type) or callable(value) else type(value)
        name = f"{getattr(kind, '__module__', None)}.{getattr(kind, '__qualname__', type(kind).__name__)}"
    return None if name.startswith("torch.") or isinstance(value, torch.dtype) else name


def _check_plain_torch(module: nn.Module, path: str) -> nn.Module:
    """``module`` (torch layers only) when everything it pickles is builtin or torch's.

    Raises:
        ConversionError: An attribute (a hook, an extra object) of another package's class or function.
    """
    for name, sub in module.named_modules(prefix=path):
        for key, value in vars(sub).items():
            found = None if key == "_modules" else _foreign(value)
            if found is not None:
                raise ConversionError(
                    f"layer {name} has attribute {key!r} holding a {found}, which YOLOv5's files do not pickle; "
                    f"delete it from the model, save, and convert again"
                )
    return module


def _translate(module: nn.Module, path: str, release: str) -> Any:
    """``module`` as YOLOv5 pickles it: torch layers as they are, Ultralytics layers as records of their twins."""
    cls = type(module)
    if _is_torch(module):
        if all(_is_torch(m) for m in module.modules()):
            return _check_plain_torch(module, path)  # pickled by torch as it is, as YOLOv5's own files hold it
        children = {n: _translate(c, f"{path}.{n}", release) for n, c in module.named_children()}
        record = _record(f"{cls.__module__}.{cls.__qualname__}", module, children)
        record.state.update({k: v for k, v in vars(module).items() if k in ROUTING})  # nn.Upsample rows
        return record
    name = cls.__name__
    if not cls.__module__.startswith("ultralytics.nn.modules.") or name not in CHILDREN:
        raise ConversionError(f"layer {path} is {cls.__module__}.{cls.__qualname__}, which YOLOv5 has no class for")
    if name not in LAYERS[release]:
        raise ConversionError(f"layer {path} is a {name}, which YOLOv5 {release} has no class for")
    own = {k for k in vars(module) if not k.startswith("_") and k != "training"}
    extra = sorted(own - set(PLAIN.get(name, ())) - set(FIXED.get(name, {})) - set(ROUTING))
    if "forward" in extra:  # fuse() binds forward_fuse and deletes the BatchNorm YOLOv5's Conv runs
        raise ConversionError(
            f"layer {path} ({name}) is fused (Conv and BatchNorm folded), which YOLOv5's {name} cannot hold; "
            f"convert the file saved before fuse()"
        )
    if extra:
        raise ConversionError(f"layer {path} ({name}) has attribute {extra[0]!r}, which YOLOv5's {name} has not")
    wrong = {k: getattr(module, k, None) for k, v in FIXED.get(name, {}).items() if getattr(module, k, None) != v}
    if wrong:
        raise ConversionError(f"layer {path} ({name}) has {wrong}; YOLOv5's {name} computes {FIXED[name]}")
    names = [n for n, _ in module.named_children()]
    expected = [n for n in CHILDREN[name] if not (name == "TransformerBlock" and n == "conv" and n not in names)]
    if names != expected:
        raise ConversionError(f"layer {path} ({name}) has children {names}; YOLOv5's {name} has {expected}")
    qualname = f"models.common.{name}"
    children = {n: _translate(c, f"{path}.{n}", release) for n, c in module.named_children()}
    record = _record(qualname, module, children)
    record.state.update({k: getattr(module, k) for k in PLAIN.get(name, ()) if k in vars(module)})
    record.state.update(_routing(module, qualname))
    return record


def _detect_record(head: LegacyDetect, release: str, stride: torch.Tensor) -> Record:
    """``models.yolo.Detect`` as ``Detect.__init__`` of ``release`` and ``Model.__init__`` leave it."""
    old = not _since(release, "v6.0")  # anchor_grid a buffer, in pixels
    anchors = head._buffers["anchors"]
    buffers = OrderedDict(anchors=anchors)
    if old:
        grid = head._buffers.get("anchor_grid")
        if grid is None:  # a head built from a YAML keeps none: anchors (grid units) times the power-of-two strides
            grid = (anchors.float() * stride.view(-1, 1, 1)).to(anchors.dtype).view(head.nl, 1, head.na, 1, 1, 2)
        buffers["anchor_grid"] = grid
    record = _record("models.yolo.Detect", head, {"m": _check_plain_torch(head.m, f"model.{getattr(head, 'i', -1)}.m")})
    record.state["_buffers"] = buffers
    record.state["_non_persistent_buffers_set"] = set()

    def empty() -> list[torch.Tensor]:  # the grids Detect.__init__ makes (filled on the first forward)
        return [torch.empty(0) for _ in range(head.nl)] if release == "v7.0" else [torch.zeros(1)] * head.nl

    record.state.update(nc=head.nc, no=head.no, nl=head.nl, na=head.na, grid=empty())
    if old:
        if release in ("v2.0", "v3.0", "v3.1"):
            record.state["export"] = False
    else:
        record.state.update(anchor_grid=empty(), inplace=True)
    record.state.update(_routing(head, "models.yolo.Detect"), stride=stride)
    return record


def _activation(model: nn.Module) -> str | None:
    """v6.0+ YAML ``activation`` for Conv blocks whose activation is not the default SiLU (None when it is)."""
    acts = {
        (type(m.act).__name__, getattr(m.act, "negative_slope", None))
        for m in model.modules()
        if type(m).__name__ == "Conv" and hasattr(m, "act")
    }
    if len(acts) != 1:
        return None
    name, slope = acts.pop()
    if name == "SiLU":
        return None
    return f"nn.{name}({slope})" if slope is not None else f"nn.{name}()"


def yolov5_yaml(model: nn.Module, release: str) -> dict[str, Any]:
    """YOLOv5's model dict: the architecture rows, the head row a ``Detect``, no focus-surgery keys.

    Raises:
        ConversionError: A row names a layer the release has no class for.
    """
    yaml = model.yaml
    out = {k: copy.deepcopy(yaml[k]) for k in YAML_KEYS if k in yaml}
    rows = list(out.get("backbone") or []) + list(out.get("head") or [])
    for i, row in enumerate(rows[:-1]):
        name = row[2] if isinstance(row, (list, tuple)) and len(row) == 4 else None
        if not (isinstance(name, str) and (name in LAYERS[release] or name.startswith("nn."))):
            raise ConversionError(f"YAML row {i} is {str(row)[:60]}, which YOLOv5 {release} cannot build")
    head = out["head"][-1]
    out["head"][-1] = [head[0], head[1], "Detect", ["nc", "anchors"]]
    if _since(release, "v4.0"):
        out["ch"] = 3  # Model.__init__ records its input channels from v4.0
    act = _activation(model) if _since(release, "v6.0") else None
    if act is not None:
        out["activation"] = act  # parse_model of v6.0+ builds every Conv with it
    return out


def model_record(model: nn.Module, release: str, recorded: dict[str, Any] | None = None) -> Record:
    """``models.yolo.Model`` (``DetectionModel`` from v6.2) of an Ultralytics model with a ``LegacyDetect`` head.

    ``recorded``: what the YOLOv5 file the model was converted from said of its model (``hyp``, ``gr``,
    ``yaml_file``), written back as it was; without it ``hyp`` is the model YAML's (numbers only).

    Raises:
        ConversionError: A layer, attribute or YAML row the release has no counterpart for.
    """
    head = model.model[-1]
    if not isinstance(head, LegacyDetect):
        raise ConversionError(f"the last layer is {type(head).__name__}, not YOLOv5's anchor head (LegacyDetect)")
    stride = head.stride.detach().clone().float()  # one tensor shared by Model and Detect, as Model.__init__ does
    rows = {}
    for n, layer in model.model.named_children():
        rows[n] = _detect_record(head, release, stride) if layer is head else _translate(layer, f"model.{n}", release)
    sequential = _record("torch.nn.modules.container.Sequential", model.model, rows)
    name = "DetectionModel" if release in ("v6.2", "v7.0") else "Model"
    record = _record(f"models.yolo.{name}", model, {"model": sequential})
    names = getattr(model, "names", None) or {i: str(i) for i in range(head.nc)}
    names = dict(names) if isinstance(names, dict) else dict(enumerate(names))
    record.state.update(
        yaml=yolov5_yaml(model, release),
        save=sorted(model.save),
        names=names if release == "v7.0" else [names[i] for i in sorted(names)],  # v7.0's check_dataset: a dict
        stride=stride,
        nc=head.nc,  # train.py attaches these
    )
    if _since(release, "v6.0"):
        record.state["inplace"] = True
    recorded = recorded or {}
    hyp = recorded.get("hyp") if isinstance(recorded.get("hyp"), dict) else model.yaml.get(HYP_KEY)
    if isinstance(hyp, dict):
        record.state["hyp"] = dict(hyp)
        if release == "v2.0":  # v2.0's train.py hyp dict always names its optimizer (its default SGD)
            record.state["hyp"].setdefault("optimizer", "SGD")
    for key, kind in (("gr", float), ("yaml_file", str)):
        if isinstance(recorded.get(key), kind):
            record.state[key] = recorded[key]
    return record


def checkpoint_content(content: dict[str, Any], release: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The checkpoint dict ``train.py`` of ``release`` writes, for an Ultralytics checkpoint's ``content``, and which
    of the input's models each written model is (``{"model": "model", "ema": "ema"}``).

    ``model`` is the training model (Ultralytics' ``model``, else its EMA), ``ema`` the EMA where both are held
    (releases before v5.0 saved the EMA as ``model``); ``optimizer`` is None (Ultralytics' optimizer state is not
    laid out as YOLOv5's); ``epoch``, ``best_fitness`` and ``date`` are the file's; ``updates`` (with an EMA) the
    file's, else that of the YOLOv5 file the model was converted from, as are ``opt`` and ``git`` when it records
    them.
    """
    models = {k: content[k] for k in ("model", "ema") if isinstance(content.get(k), nn.Module)}
    recorded = (content.get("focus_surgery") or {}).get("yolov5") or {}  # the YOLOv5 file it was converted from
    recorded = recorded if isinstance(recorded, dict) else {}
    keys = CHECKPOINT_KEYS[release]
    out: dict[str, Any] = dict.fromkeys(keys)
    if "ema" in keys:
        origin = {"model": "model" if "model" in models else "ema"}
        if len(models) == 2:  # train.py --weights loads the EMA with its update count (``ema.updates += 1``)
            origin["ema"] = "ema"
            updates = [u for u in (content.get("updates"), recorded.get("updates")) if _count(u)]
            out["updates"] = updates[0] if updates else 0  # unknown: the EMA restarts its warm-up
    else:
        origin = {"model": "ema" if "ema" in models else "model"}
    for key, source in origin.items():
        out[key] = model_record(models[source], release, recorded)
    out["epoch"] = content["epoch"] if _count(content.get("epoch"), -1) else -1
    best = content.get("best_fitness")
    out["best_fitness"] = float(best) if isinstance(best, (int, float)) and not isinstance(best, bool) else None
    for key in ("opt", "git"):
        if key in keys and isinstance(recorded.get(key), dict):
            out[key] = recorded[key]
    if "date" in keys and isinstance(content.get("date"), str):
        out["date"] = content["date"]
    return out, origin


def _count(value: Any, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
