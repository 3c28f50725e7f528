"""What a checkpoint's pickle may name, as data: ONE table, every entry saying what the file gets and why.

``ALLOWED`` maps a name to an ``Allowed`` entry of one of two kinds, and nothing else is admitted:

* a global name (``torch.Size``) with a fixed stand-in - a validating rebuilder (tensors, storages, numpy values,
  enum members), an inert container type, or a non-callable marker. No torch or numpy class is ever callable.
* a record module (``models.yolo``; ``pkg.*`` admits every module under ``pkg``): its classes become ``Record``
  objects (name + pickled state); no class of the file is imported and none of its code runs. Where ``materialise``
  is set, records of installed layer classes may later be rebuilt (``loader.layers``), again without running their
  constructors.

``allow_records(module, reason)`` admits more record modules, as torch's ``add_safe_globals`` admits more globals.
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


STORAGE_DTYPES = {
    "torch.HalfStorage": torch.float16,
    "torch.FloatStorage": torch.float32,
    "torch.DoubleStorage": torch.float64,
    "torch.BFloat16Storage": torch.bfloat16,
    "torch.LongStorage": torch.int64,
    "torch.IntStorage": torch.int32,
    "torch.ShortStorage": torch.int16,
    "torch.CharStorage": torch.int8,
    "torch.ByteStorage": torch.uint8,
    "torch.BoolStorage": torch.bool,
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

    def add(names: tuple[str, ...], value: Any, reason: str, needs_budget: bool = False) -> None:
        for name in names:
            table[name] = Allowed(reason, value, needs_budget)

    add(
        ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"),
        rb.rebuild_tensor,
        "every tensor: a view of a storage, extent and logical size checked against the file",
        needs_budget=True,
    )
    add(
        ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"),
        rb.rebuild_parameter,
        "nn.Parameter over a tensor read above; hooks and state dropped; a second one over a tensor is charged",
        needs_budget=True,
    )
    add(
        ("torch._tensor._rebuild_from_type_v2",),
        rb.rebuild_from_type,
        "tensors with a Python type tag: only our rebuilders, the tag must be a plain tensor type",
    )
    for name, marker in rb.TENSOR_TYPES.items():
        add((name,), marker, "named as the type tag of _rebuild_from_type_v2; a marker, never callable")
    add(("torch.Size",), rb.torch_size, "shape tuples: integers only")
    add(("torch.device",), rb.torch_device, "device of a tensor or setting: known device kinds only")
    for name, dtype in STORAGE_DTYPES.items():
        add((name,), StorageType(dtype), "storage type in a persistent id; only its dtype is read")
    for dtype in STORAGE_DTYPES.values():
        add((str(dtype),), dtype, "a dtype constant (e.g. a model's or AMP setting's dtype)")
    add(("collections.OrderedDict",), OrderedDict, "state dicts; an inert container")
    add(("collections.Counter",), Counter, "MultiStepLR's milestones in a scheduler's state dict; an inert container")
    for py in ("builtins", "__builtin__"):
        add((f"{py}.set",), set, "an inert container")
        add((f"{py}.frozenset",), frozenset, "an inert container")
        add((f"{py}.slice",), slice, "an inert value (YOLOv5 v1.0 metadata)")
        add((f"{py}.dict",), dict, "a plain dict (our outputs write read namespaces this way); keys checked")
        add((f"{py}.str", "__builtin__.unicode"), rb.text_value, "text (our outputs write named references this way)")
        add((f"{py}.object",), rb.TypeMarker("object"), "base of copyreg._reconstructor; a marker")
        add(
            (f"{py}.getattr",),
            rb.named_reference_via(f"{py}.getattr"),
            "getattr(Class, 'method') pickles a function attribute (YOLOv5 v7.0 Segment.detect): a named reference",
        )
    add(("_codecs.encode",), rb.encode, "bytes in protocol-2 pickles: latin-1 / utf-8 text to bytes", needs_budget=True)
    add(
        ("copyreg._reconstructor", "copy_reg._reconstructor"),
        rb.reconstructor,
        "protocol 0/1 objects: record classes only",
    )
    for core in ("numpy.core", "numpy._core"):  # numpy < 2 and numpy >= 2 spellings
        add((f"{core}.multiarray._reconstruct",), rb.numpy_reconstruct, "numpy arrays: plain number dtypes only")
        add(
            (f"{core}.multiarray.scalar",),
            rb.numpy_scalar,
            "numpy scalars (metrics): plain number dtypes only",
            needs_budget=True,
        )
    add(("numpy.ndarray",), rb.NDARRAY, "argument of _reconstruct; a marker")
    add(("numpy.dtype",), rb.DtypeSpec, "numpy dtypes: plain number types only")
    for cls in ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"):
        add(
            (f"pathlib.{cls}",),
            rb.path_reader(f"pathlib.{cls}"),
            "paths in training options (YOLOv5 train.py since 2024): as text that remembers its class",
            needs_budget=True,
        )
    for name in ("types.SimpleNamespace", "argparse.Namespace", "ultralytics.utils.IterableSimpleNamespace"):
        add((name,), namespace_class(name), "training arguments (Ultralytics model.args): read as a dict")

    for name in ("torchvision.transforms.functional.InterpolationMode", "torchvision.transforms.InterpolationMode"):
        add((name,), rb.enum_value(name), "an interpolation setting of a recorded transform: a named reference")

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
    records(
        "mmengine.logging.*",
        "mmengine training checkpoints: message_hub's HistoryBuffer (logged scalars as numpy arrays, its statistics "
        "methods as getattr references); bookkeeping, written back unchanged",
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
    if not all(part.isidentifier() for part in parts):
        return False
    entry = ALLOWED.get(module)
    if entry is not None and entry.record:
        return True
    return any(getattr(ALLOWED.get(".".join(parts[:n]) + ".*"), "record", False) for n in range(1, len(parts)))


def allow_records(module: str, reason: str) -> None:
    """Read the classes of ``module`` (``"pkg.*"``: every module under ``pkg``) as records, with ``reason`` saying
    why the files that name them are expected; like torch's ``serialization.add_safe_globals``.

    A record is inert data (class name + pickled state): no class of the file is imported and none of its code
    runs. Records of modules added here are never rebuilt as live layers.

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
