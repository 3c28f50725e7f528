"""The only functions a checkpoint may call: stand-ins for torch's / numpy's rebuilders that build plain values from
checked numbers and bytes; hooks, metadata, subclasses and pointers from a file are never passed on."""

from __future__ import annotations

import codecs
import math
import pathlib
import pickle
from typing import Any

import numpy as np
import torch

from .errors import Refused
from .records import NamedReference, PathText, Record, path_text

_MAX_DIMS = 16


class Budget:
    """A size limit derived from the file's own size: what one load may build of one kind."""

    def __init__(self, limit_bytes: int, kind: str):
        self.limit, self.used, self.kind = limit_bytes, 0, kind

    def take(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise Refused(
                f"{what} brings the {self.kind} to {self.used:,} bytes, more than this file can hold ({self.limit:,})"
            )


class Budgets:
    """The two limits of one load: tensors' logical size (stride-0 views included) and Python objects and values
    built by the unpickler (each opcode, each copied string or array)."""

    def __init__(self, tensors: int, objects: int):
        self.tensors, self.objects = Budget(tensors, "tensors' logical size"), Budget(objects, "objects built")
        self.wrapped: dict[int, torch.Tensor] = {}  # tensors a parameter was made over (kept alive: ids stay unique)


def _ints(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list, torch.Size)) or len(values) > _MAX_DIMS:
        raise pickle.UnpicklingError(f"{what} is not a short tuple of integers")
    if not all(type(v) is int and -(1 << 63) <= v < 1 << 63 for v in values):  # before any product of them
        raise pickle.UnpicklingError(f"{what} holds something other than 64-bit integers")
    return tuple(values)


def rebuild_tensor(budgets: Budgets, storage, storage_offset, size, stride, *unused) -> torch.Tensor:
    """``torch._utils._rebuild_tensor[_v2]`` without hooks or metadata: a plain tensor viewing ``storage``."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("tensor without a storage")
    if type(storage_offset) is not int:
        raise pickle.UnpicklingError("tensor offset is not an integer")
    size, stride, offset = _ints(size, "tensor size"), _ints(stride, "tensor stride"), storage_offset
    if len(size) != len(stride) or offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise pickle.UnpicklingError("tensor with a negative size, stride or offset, or mismatched size and stride")
    extent = 0 if 0 in size else offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    available = storage._untyped_storage.nbytes() // storage.dtype.itemsize
    if extent > available:
        raise pickle.UnpicklingError(f"tensor reaches element {extent} of a storage of {available}")
    budgets.tensors.take(math.prod(size) * storage.dtype.itemsize, f"a tensor of shape {list(size)}")
    return torch.empty((0,), dtype=storage.dtype).set_(storage._untyped_storage, offset, torch.Size(size), stride)


def rebuild_parameter(budgets: Budgets, data, requires_grad=False, *unused) -> torch.Tensor:
    """``torch._utils._rebuild_parameter[_with_state]``: an ``nn.Parameter`` over ``data``, hooks and state dropped.

    A second parameter over the same tensor (its arguments from the memo) is charged again, as a tensor used again."""
    if type(data) is not torch.Tensor:
        raise pickle.UnpicklingError("parameter without plain tensor data")
    if id(data) in budgets.wrapped:
        budgets.tensors.take(data.numel() * data.element_size(), "a parameter made again over one tensor")
    budgets.wrapped[id(data)] = data
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


class TypeMarker:
    """Stands for a class a pickle may name as an argument (``torch.Tensor`` in ``_rebuild_from_type_v2``) but must
    never call or instantiate: the real class would accept hidden keywords (``cdata``) that reach C++ pointers."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __repr__(self) -> str:
        return f"<type {self.qualname}>"


TENSOR_TYPES = {name: TypeMarker(name) for name in ("torch.Tensor", "torch.nn.parameter.Parameter")}


class BoundRebuilder:
    """A rebuilder tied to one load's budgets (what a file gets for a name whose entry ``needs_budget``)."""

    __slots__ = ("func", "budgets", "qualname")

    def __init__(self, func, budgets: Budgets, qualname: str):
        self.func, self.budgets, self.qualname = func, budgets, qualname

    def __call__(self, *args):
        return self.func(self.budgets, *args)


def rebuild_from_type(func, new_type, args, state) -> torch.Tensor:
    """``torch._tensor._rebuild_from_type_v2``: only our tensor rebuilders, only plain tensor types, state dropped."""
    is_tensor_rebuilder = isinstance(func, BoundRebuilder) and func.func in (rebuild_tensor, rebuild_parameter)
    if not is_tensor_rebuilder or new_type not in TENSOR_TYPES.values():
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with an unexpected function or type")
    if not isinstance(args, tuple):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 without an argument tuple")
    return func(*args)


def encode(budgets: Budgets, text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin1 / utf-8 only)."""
    if not isinstance(text, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode of something other than text")
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    budgets.objects.take(len(text) * 2, "bytes from _codecs.encode")  # one string may be encoded many times
    return codecs.encode(text, encoding)


def reconstructor(cls, base, state=None):
    """``copyreg._reconstructor`` (protocol 0/1 pickles of plain objects) for record classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Record)) or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor for a class that is not a record")
    record = cls.__new__(cls)
    record.pickled_by = "reconstructor"
    return record


def text_value(value="") -> str:
    """``str(text)`` as pickles write a text value (our own outputs write named references this way)."""
    if not isinstance(value, str):
        raise Refused("str() of something other than text")
    return value


def torch_size(dims=()) -> torch.Size:
    return torch.Size(_ints(dims, "torch.Size"))


def torch_device(kind, index=None) -> torch.device:
    if not isinstance(kind, str) or kind.partition(":")[0] not in ("cpu", "cuda", "mps", "meta", "xpu"):
        raise pickle.UnpicklingError("torch.device of an unknown kind")
    if index is not None and (type(index) is not int or not 0 <= index < 1024):
        raise pickle.UnpicklingError("torch.device with an invalid index")
    return torch.device(kind) if index is None else torch.device(kind, index)


def path_reader(qualname: str):
    """``pathlib.<qualname>(*parts)``: the path read as the text it holds (a ``PathText`` remembering its class and
    parts, so that it is written back as the same path; its class is never imported)."""

    def read(budgets: Budgets, *parts) -> PathText:
        if not all(isinstance(p, str) for p in parts):
            raise pickle.UnpicklingError("path made of something other than text")
        budgets.objects.take(sum(len(p) + 1 for p in parts) * 2, "a path")
        return path_text(qualname, parts, str(pathlib.PurePosixPath(*parts)) if parts else ".")

    return read


def named_reference_via(getattr_name: str):
    """``getattr(Class, "method")`` as pickled for a function attribute (YOLOv5's ``Segment.detect``, mmengine's
    ``HistoryBuffer`` statistics), through the global ``getattr_name`` (``builtins.getattr`` or its protocol-2
    spelling ``__builtin__.getattr``), which the reference keeps to be written back the same way."""

    def named_reference(owner, name) -> NamedReference:
        if not isinstance(name, str) or not name.isidentifier():
            raise pickle.UnpicklingError("getattr with a name that is not an identifier")
        if (isinstance(owner, type) and issubclass(owner, Record)) or isinstance(owner, Record):
            return NamedReference(f"{owner.qualname}.{name}", (getattr_name, (owner, name)))
        raise Refused("getattr on something other than a recorded class")

    return named_reference


def enum_value(qualname: str):
    def read(value):
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise pickle.UnpicklingError(f"{qualname} value of an unexpected type")
        return NamedReference(f"{qualname}.{value}", (qualname, (value,)))

    return read


_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: no objects, no structured fields


class DtypeSpec:
    """What a pickle asked ``numpy.dtype(...)`` for; becomes a real dtype only if it is a plain numeric one."""

    def __init__(self, spec, *unused):
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and all(part is None for part in state[2:5])):
            raise pickle.UnpicklingError("numpy dtype with fields or sub-arrays")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        if not isinstance(self.spec, str) or len(self.spec) > 8 or self.byteorder not in ("<", ">", "=", "|"):
            raise pickle.UnpicklingError("unsupported numpy dtype")
        try:
            dtype = np.dtype(self.spec)
        except TypeError:
            raise pickle.UnpicklingError(f"unknown numpy dtype {self.spec!r}") from None
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"numpy dtype {self.spec!r} is not a plain number type")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class ArraySpec:
    """What ``numpy.core.multiarray._reconstruct`` + its state describe; ``to_numpy`` copies the validated bytes."""

    state: Any = None

    def __setstate__(self, state) -> None:
        self.state = state

    def to_numpy(self, budgets: Budgets) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise pickle.UnpicklingError("numpy array without its data")
        _, shape, dtype, fortran, raw = self.state
        if not isinstance(dtype, DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy array of an unsupported kind")
        dtype = dtype.to_numpy()
        shape = _ints(shape, "numpy array shape")
        if any(n < 0 for n in shape) or math.prod(shape) * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError("numpy array whose data does not match its shape")
        budgets.objects.take(len(raw), "a numpy array")
        return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


NDARRAY = TypeMarker("numpy.ndarray")  # the first argument of _reconstruct; not callable


def numpy_reconstruct(cls, *unused) -> ArraySpec:
    if cls is not NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct of something other than an ndarray")
    return ArraySpec()


def numpy_scalar(budgets: Budgets, dtype, raw=b"", *unused):
    if not isinstance(dtype, DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar of an unsupported kind")
    dtype = dtype.to_numpy()
    if len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar whose data does not match its type")
    budgets.objects.take(64, "a numpy scalar")
    return np.frombuffer(bytes(raw), dtype=dtype)[0]
