"""What a checkpoint's pickle may name, as data: ONE table (``ALLOWED``), each entry saying what the file gets and why.

An entry is a global name (``torch.Size``) with a fixed stand-in - a validating rebuilder, an inert container type or a
non-callable marker (no torch or numpy class is ever callable) - or a record module (``models.yolo``; ``pkg.*``: every
module under ``pkg``) whose classes become inert ``Record`` data; where ``materialise`` is set, records of installed
layer classes may later be rebuilt without running their constructors (``loader.layers``). ``allow_records`` admits
more record modules, as torch's ``add_safe_globals`` admits more globals.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from . import rebuilders as rb
from .records import namespace_class


@dataclass(frozen=True)
class Allowed:
    """One row of the allow-list: what the file gets for a name, and why that is safe."""

    reason: str
    value: Any = None  # the stand-in a global name resolves to (None for a record module)
    needs_budget: bool = False  # a rebuilder that builds from sizes or copies bytes: bound to the load's budgets
    record: bool = False  # a module whose classes are read as records
    materialise: bool = False  # ... and whose installed layer classes may be rebuilt as live modules


_STORAGES = "Half:float16 Float:float32 Double:float64 BFloat16:bfloat16 Long:int64 Int:int32 Short:int16 Char:int8"
STORAGE_DTYPES = {  # torch.<Name>Storage (named in a persistent id): its dtype
    f"torch.{name}Storage": getattr(torch, dtype)
    for name, dtype in (pair.split(":") for pair in f"{_STORAGES} Byte:uint8 Bool:bool".split())
}


class StorageType:
    """Stand-in for ``torch.<Type>Storage`` in a persistent id: only its dtype matters. Immutable: a pickle must
    not be able to change how later files load."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, name, value):
        raise TypeError("a storage type cannot be modified")


def _table() -> dict[str, Allowed]:
    table: dict[str, Allowed] = {}

    def add(names: str, value: Any, reason: str, needs_budget: bool = False) -> None:
        """``names``: space-separated; ``{py}`` / ``{core}``: each spelling of builtins / numpy's core module."""
        for name in names.split():
            for py in ("builtins", "__builtin__"):
                for core in ("numpy.core", "numpy._core"):  # numpy < 2 and numpy >= 2
                    table[name.format(py=py, core=core)] = Allowed(reason, value, needs_budget)

    tensor, budget = "torch._utils._rebuild_tensor", True
    add(
        f"{tensor}_v2 {tensor}",
        rb.rebuild_tensor,
        "every tensor: a view of a storage, extent and logical size checked against the file",
        budget,
    )
    add(
        "torch._utils._rebuild_parameter torch._utils._rebuild_parameter_with_state",
        rb.rebuild_parameter,
        "nn.Parameter over a tensor read above; hooks and state dropped; a second one over a tensor is charged",
        budget,
    )
    add(
        "torch._tensor._rebuild_from_type_v2",
        rb.rebuild_from_type,
        "tensors with a Python type tag: only our rebuilders, the tag must be a plain tensor type",
    )
    for name, marker in rb.TENSOR_TYPES.items():
        add(name, marker, "named as the type tag of _rebuild_from_type_v2; a marker, never callable")
    add("torch.Size", rb.torch_size, "shape tuples: integers only")
    add("torch.device", rb.torch_device, "device of a tensor or setting: known device kinds only")
    for name, dtype in STORAGE_DTYPES.items():
        add(name, StorageType(dtype), "storage type in a persistent id; only its dtype is read")
        add(str(dtype), dtype, "a dtype constant (e.g. a model's or AMP setting's dtype)")
    add("collections.OrderedDict", OrderedDict, "state dicts; an inert container")
    add("collections.Counter", Counter, "MultiStepLR's milestones in a scheduler's state dict; an inert container")
    add("{py}.set", set, "an inert container")
    add("{py}.frozenset", frozenset, "an inert container")
    add("{py}.slice", slice, "an inert value (YOLOv5 v1.0 metadata)")
    add("{py}.dict", dict, "a plain dict (our outputs write read namespaces this way); keys checked")
    add("{py}.str __builtin__.unicode", rb.text_value, "text (our outputs write named references this way)")
    add("{py}.object", rb.TypeMarker("object"), "base of copyreg._reconstructor; a marker")
    for py in ("builtins", "__builtin__"):
        reason = "getattr(Class, 'method') pickles a function attribute (YOLOv5 v7.0 Segment.detect): a named reference"
        add(f"{py}.getattr", rb.named_reference_via(f"{py}.getattr"), reason)
    add("_codecs.encode", rb.encode, "bytes in protocol-2 pickles: latin-1 / utf-8 text to bytes", budget)
    add("copyreg._reconstructor copy_reg._reconstructor", rb.reconstructor, "protocol 0/1 objects: record classes only")
    add("{core}.multiarray._reconstruct", rb.numpy_reconstruct, "numpy arrays: plain number dtypes only")
    add("{core}.multiarray.scalar", rb.numpy_scalar, "numpy scalars (metrics): plain number dtypes only", budget)
    add("numpy.ndarray", rb.NDARRAY, "argument of _reconstruct; a marker")
    add("numpy.dtype", rb.DtypeSpec, "numpy dtypes: plain number types only")
    for cls in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        reason = "paths in training options (YOLOv5 train.py since 2024): as text that remembers its class"
        add(f"pathlib.{cls}", rb.path_reader(f"pathlib.{cls}"), reason, budget)
    for name in ("types.SimpleNamespace", "argparse.Namespace", "ultralytics.utils.IterableSimpleNamespace"):
        add(name, namespace_class(name), "training arguments (Ultralytics model.args): read as a dict")
    for name in ("torchvision.transforms.functional.InterpolationMode", "torchvision.transforms.InterpolationMode"):
        add(name, rb.enum_value(name), "an interpolation setting of a recorded transform: a named reference")

    def records(module: str, reason: str, materialise: bool = False) -> None:
        table[module] = Allowed(reason, record=True, materialise=materialise)

    records("models.yolo", "YOLOv5 / yolov3 / yolov7 / YOLOR repositories: Model, Detect and heads")
    records("models.common", "those repositories' layers (Focus, Conv, C3, ReOrg, ...)")
    records("models.experimental", "those repositories' experimental layers (MixConv2d, Ensemble, ...)")
    records("torch.nn.modules.*", "torch layers inside a pickled model", materialise=True)
    records("ultralytics.nn.tasks", "Ultralytics model classes", materialise=True)
    records("ultralytics.nn.modules.*", "Ultralytics layers", materialise=True)
    records("timm.layers.*", "timm layers", materialise=True)
    records("timm.models.*", "timm models", materialise=True)
    records("focus_surgery.*", "our own layers in converted models", materialise=True)
    records("torchvision.transforms.transforms", "YOLOv5 v7.0 classification models keep their transforms")
    records("utils.augmentations", "YOLOv5's own preprocessing transforms, kept by its classification models")
    records("yolox.models.*", "YOLOX models saved whole")
    mmengine = "mmengine training checkpoints: message_hub's HistoryBuffer (logged scalars as numpy arrays, its "
    records(
        "mmengine.logging.*",
        mmengine + "statistics methods as getattr references); bookkeeping, written back unchanged",
    )
    return table


ALLOWED: dict[str, Allowed] = _table()

# Packages whose installed layer classes ``loader.layers`` may rebuild (the ``materialise`` rows), as prefixes.
MODULE_PREFIXES = tuple(name.removesuffix("*").rstrip(".") + "." for name, e in ALLOWED.items() if e.materialise)


def stand_in(qualname: str) -> Allowed | None:
    """The entry of a global name that resolves to a fixed stand-in, else None."""
    entry = ALLOWED.get(qualname)
    return entry if entry is not None and not entry.record else None


def is_record_module(module: str) -> bool:
    """Whether classes of ``module`` are read as records: an exact row, or a ``pkg.*`` row of a parent package."""
    parts = module.split(".")
    rows = [module] + [".".join(parts[:n]) + ".*" for n in range(1, len(parts))]
    return all(map(str.isidentifier, parts)) and any(getattr(ALLOWED.get(row), "record", False) for row in rows)


def allow_records(module: str, reason: str) -> None:
    """Read the classes of ``module`` (``"pkg.*"``: every module under ``pkg``) as inert records (never rebuilt as
    live layers), ``reason`` saying why files name them; like torch's ``serialization.add_safe_globals``.

    Raises:
        ValueError: ``module`` is not a dotted module name (optionally ending in ``.*``), ``reason`` is empty, or
            the name is already a global stand-in.
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"allow_records({module!r}): say why its classes are expected in checkpoints (reason)")
    base = module.removesuffix(".*") if isinstance(module, str) else ""
    if not all(part.isidentifier() for part in base.split(".")):
        raise ValueError(f"allow_records({module!r}): not a dotted module name (optionally ending in '.*')")
    if stand_in(module) is not None:
        raise ValueError(f"allow_records({module!r}): already allowed as a global name")
    if module not in ALLOWED:
        ALLOWED[module] = Allowed(" ".join(reason.split()), record=True)
