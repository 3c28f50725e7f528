"""Safe reading of YOLOv5-repository checkpoints: a restricted unpickler that turns objects into inert records.

A YOLOv5 ``.pt`` pickles whole ``models.yolo.Model`` objects. Loading it normally needs the YOLOv5 repository on
``sys.path`` and ``torch.load(weights_only=False)``, i.e. running whatever code the file names. Here the unpickler
admits only the globals such files really contain and builds, for every class instance, a ``LegacyRecord``: the
class name plus the pickled attribute dict, nothing else. No class of the file is imported and no method of it
runs. Tensors are rebuilt from their raw bytes. Any other global is refused with an error naming it.

Containers read: the torch >= 1.6 zip archive (``*/data.pkl`` + ``*/data/<key>``) and the older torch format (a run
of pickles followed by raw storages). numpy is accepted under both ``numpy.core`` (numpy < 2) and ``numpy._core``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import struct
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint_io import CheckpointError, check_readable

# Module prefixes whose classes become records (YOLOv5 layers and the torch layers inside them).
RECORD_PREFIXES = ("models.yolo.", "models.common.", "models.experimental.", "torch.nn.modules.")
STORAGE_DTYPES = {
    "torch.HalfStorage": torch.float16, "torch.FloatStorage": torch.float32, "torch.DoubleStorage": torch.float64,
    "torch.BFloat16Storage": torch.bfloat16, "torch.LongStorage": torch.int64, "torch.IntStorage": torch.int32,
    "torch.ShortStorage": torch.int16, "torch.CharStorage": torch.int8, "torch.ByteStorage": torch.uint8,
    "torch.BoolStorage": torch.bool,
}  # fmt: skip
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class LegacyRecord:
    """An object read from a legacy pickle, kept as data: the name of its class and its pickled state.

    Attributes:
        qualname (str): ``module.Class`` as written in the file, e.g. ``models.common.Focus``.
        args (tuple): Arguments the pickle passed to ``__new__`` (usually empty).
        state (dict): The pickled ``__dict__`` (for modules: ``_parameters``, ``_buffers``, ``_modules``, ...).
    """

    qualname = "?"

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            for part in state:
                if isinstance(part, dict):
                    self.state.update(part)
        elif isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __reduce__(self):
        raise TypeError(f"a {self.qualname} record is data read from a legacy checkpoint; it cannot be pickled")

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"

    @property
    def name(self) -> str:
        """The class name alone, e.g. ``Focus``."""
        return self.qualname.rpartition(".")[2]

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def children(self) -> dict[str, LegacyRecord]:
        """Sub-modules in registration order (``_modules``), skipping empty slots."""
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if v is not None}

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, LegacyRecord]]:
        """(path, record) for this record and every sub-module, depth first, as ``nn.Module.named_modules``."""
        yield prefix, self
        for name, child in self.children().items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def state_dict(self, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
        """The tensors ``nn.Module.state_dict()`` would return (parameters, persistent buffers), by name."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        non_persistent = self.state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, tensor in (self.state.get(kind) or {}).items():
                if tensor is not None and not (kind == "_buffers" and name in non_persistent):
                    out[prefix + name] = tensor
        for name, child in self.children().items():
            out.update(child.state_dict(f"{prefix}{name}."))
        return out


class _StorageType:
    """Stand-in for ``torch.<Type>Storage`` in a persistent id: only its dtype matters. Immutable: a pickle must
    not be able to change how later files load."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError("a storage type cannot be modified")


def _rebuild_tensor(storage, storage_offset, size, stride, *unused) -> torch.Tensor:
    """``torch._utils._rebuild_tensor[_v2]`` without hooks or metadata: a plain tensor viewing ``storage``."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("tensor without a storage")
    size, stride, offset = tuple(int(v) for v in size), tuple(int(v) for v in stride), int(storage_offset)
    if len(size) != len(stride) or offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise pickle.UnpicklingError("tensor with a negative size, stride or offset")
    extent = 0 if 0 in size else offset + sum((n - 1) * st for n, st in zip(size, stride)) + 1
    available = storage._untyped_storage.nbytes() // _element_size(storage.dtype)
    if extent > available:
        raise pickle.UnpicklingError(f"tensor reaches element {extent} of a storage of {available}")
    tensor = torch.empty((0,), dtype=storage.dtype)
    return tensor.set_(storage._untyped_storage, storage_offset, torch.Size(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, *unused) -> torch.Tensor:
    """``torch._utils._rebuild_parameter[_with_state]``: an ``nn.Parameter`` over ``data``, hooks and state dropped."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter without tensor data")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad) and data.is_floating_point())


def _rebuild_from_type(func, new_type, args, state) -> torch.Tensor:
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise pickle.UnpicklingError("_rebuild_from_type_v2 with an unexpected rebuild function")
    return func(*args)


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin1 only)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding)


def _reconstructor(cls, base, state=None):
    """``copyreg._reconstructor`` (protocol 0/1 pickles of plain objects) for record classes only."""
    if not (isinstance(cls, type) and issubclass(cls, LegacyRecord)):
        raise pickle.UnpicklingError("copyreg._reconstructor for a class that is not a record")
    return cls.__new__(cls)


_NUMERIC_KINDS = "biufc"  # bool, int, uint, float, complex: no objects, no structured fields


class _DtypeSpec:
    """What a pickle asked ``numpy.dtype(...)`` for; becomes a real dtype only if it is a plain numeric one."""

    def __init__(self, spec, *unused):
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state) -> None:
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not (isinstance(state, tuple) and len(state) >= 5 and all(part is None for part in state[2:5])):
            raise pickle.UnpicklingError("numpy dtype with fields or sub-arrays")
        self.byteorder = state[1]

    def to_numpy(self) -> np.dtype:
        if not isinstance(self.spec, str) or self.byteorder not in ("<", ">", "=", "|"):
            raise pickle.UnpicklingError("unsupported numpy dtype")
        dtype = np.dtype(self.spec)
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"numpy dtype {self.spec!r} is not a plain number type")
        return dtype.newbyteorder(self.byteorder) if self.byteorder in "<>" else dtype


class _ArraySpec:
    """What ``numpy.core.multiarray._reconstruct`` + its state describe; ``to_numpy`` copies the validated bytes."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state) -> None:
        self.state = state

    def to_numpy(self) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise pickle.UnpicklingError("numpy array without its data")
        _, shape, dtype, fortran, raw = self.state
        if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("numpy array of an unsupported kind")
        dtype = dtype.to_numpy()
        shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in shape) or int(np.prod(shape)) * dtype.itemsize != len(raw):
            raise pickle.UnpicklingError("numpy array whose data does not match its shape")
        return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


_NDARRAY = object()  # stands for numpy.ndarray as the first argument of _reconstruct; not callable


def _numpy_reconstruct(cls, *unused) -> _ArraySpec:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct of something other than an ndarray")
    return _ArraySpec()


def _numpy_scalar(dtype, raw=b"", *unused):
    if not isinstance(dtype, _DtypeSpec) or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar of an unsupported kind")
    dtype = dtype.to_numpy()
    if len(raw) != dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar whose data does not match its type")
    return np.frombuffer(bytes(raw), dtype=dtype)[0]


def _finish_arrays(value: Any, memo: dict[int, Any]) -> Any:
    """Replace every ``_ArraySpec`` (in containers and record states) by its numpy array."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, _ArraySpec):
        memo[id(value)] = value.to_numpy()
    elif isinstance(value, LegacyRecord):
        memo[id(value)] = value
        _finish_arrays(value.state, memo)
    elif isinstance(value, dict):
        memo[id(value)] = value
        for key in list(value):
            value[key] = _finish_arrays(value[key], memo)
    elif isinstance(value, list):
        memo[id(value)] = value
        value[:] = [_finish_arrays(v, memo) for v in value]
    elif type(value) is tuple:
        memo[id(value)] = tuple(_finish_arrays(v, memo) for v in value)
    else:
        return value
    return memo[id(value)]


def _fixed_globals() -> dict[str, Any]:
    table: dict[str, Any] = {
        "collections.OrderedDict": OrderedDict,
        "builtins.set": set, "__builtin__.set": set, "builtins.frozenset": frozenset, "__builtin__.frozenset": frozenset,
        "builtins.slice": slice, "__builtin__.slice": slice,
        "_codecs.encode": _encode,
        "copyreg._reconstructor": _reconstructor, "copy_reg._reconstructor": _reconstructor,
        "builtins.object": object, "__builtin__.object": object,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor, "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
        "torch.nn.parameter.Parameter": torch.nn.Parameter, "torch.Tensor": torch.Tensor,
        "torch.Size": torch.Size, "torch.device": torch.device,
    }  # fmt: skip
    for core in ("numpy.core", "numpy._core"):  # numpy < 2 and numpy >= 2 spellings
        table[f"{core}.multiarray._reconstruct"] = _numpy_reconstruct
        table[f"{core}.multiarray.scalar"] = _numpy_scalar
    table["numpy.ndarray"] = _NDARRAY
    table["numpy.dtype"] = _DtypeSpec
    for name, dtype in STORAGE_DTYPES.items():
        table[name] = _StorageType(dtype)
    for dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.int32, torch.uint8):
        table[str(dtype)] = dtype  # "torch.float16"
    return table


_GLOBALS = _fixed_globals()
_RECORD_CLASSES: dict[str, type] = {}


def record_class(qualname: str) -> type:
    """The (cached) record class standing for ``qualname``; a plain subclass of ``LegacyRecord``."""
    if qualname not in _RECORD_CLASSES:
        _RECORD_CLASSES[qualname] = type(qualname.rpartition(".")[2], (LegacyRecord,), {"qualname": qualname})
    return _RECORD_CLASSES[qualname]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""

    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


# The only objects whose state a pickle may set: fresh instances made by this load (records, numpy specs, the
# OrderedDict of a state dict with its ``_metadata``), never a shared global such as a storage stand-in.
_BUILDABLE = (LegacyRecord, _DtypeSpec, _ArraySpec, OrderedDict)


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only allow-listed globals; storages come from ``load_storage(dtype, key, numel)``.

    The pure-Python unpickler, so that BUILD (setting an object's state) can be limited to inert records: a pickle
    must not reach into the functions and constants it was allowed to name.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        if not isinstance(self.stack[-2], _BUILDABLE):
            raise pickle.UnpicklingError(f"refusing to set the state of a {type(self.stack[-2]).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def __init__(self, file, load_storage, record_prefixes: tuple[str, ...] = RECORD_PREFIXES):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage
        self._storages: dict[str, Any] = {}
        self._record_prefixes = record_prefixes

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname in _GLOBALS:
            return _GLOBALS[qualname]
        if qualname.startswith(self._record_prefixes) and name.isidentifier():
            return record_class(qualname)
        raise RefusedGlobal(qualname)

    def persistent_load(self, pid) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {type(pid).__name__}")
        if pid[0] == "module" and len(pid) >= 2 and isinstance(pid[1], type) and issubclass(pid[1], LegacyRecord):
            return pid[1]  # old torch.save stored each module class with its source text; the class is enough
        if pid[0] != "storage" or len(pid) < 5 or not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid[:2])[:80]}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        view = pid[5] if len(pid) > 5 else None
        if key not in self._storages:
            self._storages[key] = self._load_storage(storage_type.dtype, key, numel)
        storage = self._storages[key]
        if view is not None:  # legacy storage view: (view_key, offset, size)
            _, offset, size = view
            element = _element_size(storage.dtype)
            raw = storage._untyped_storage[offset * element : (offset + size) * element]
            storage = torch.storage.TypedStorage(wrap_storage=raw, dtype=storage.dtype, _internal=True)
        return storage


def _typed_storage(data: bytes | bytearray, dtype: torch.dtype) -> torch.storage.TypedStorage:
    untyped = torch.UntypedStorage.from_buffer(bytearray(data), dtype=torch.uint8) if data else torch.UntypedStorage(0)
    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_zip(path: Path, record_prefixes: tuple[str, ...]) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pickles:
            raise CheckpointError(f"{path}: zip archive without data.pkl, not a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise CheckpointError(f"{path}: big-endian checkpoint; re-save it on a little-endian machine")

        readers: list[Any] = []  # torch's own record reader, opened on the first storage (pickle-free, no copy)

        def load_storage(dtype, key, numel):
            if not readers:
                readers.append(torch._C.PyTorchFileReader(str(path)))
            reader, name = readers[0], f"data/{key}"
            if not reader.has_record(name) or reader.get_record_size(name) < numel * _element_size(dtype):
                raise CheckpointError(f"{path}: storage {key} is missing or truncated")
            raw = reader.get_storage_from_record(name, reader.get_record_size(name), torch.uint8)
            return torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=dtype, _internal=True)

        content = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage, record_prefixes).load()
        return _finish_arrays(content, {})


def _load_legacy(path: Path, record_prefixes: tuple[str, ...]) -> Any:
    """The pre-1.6 torch format: magic, protocol and sys-info pickles, the object, its storage keys, raw storages."""
    pending: dict[str, tuple[torch.storage.TypedStorage, int]] = {}

    def load_storage(dtype, key, numel):
        storage = torch.storage.TypedStorage(wrap_storage=torch.UntypedStorage(numel * _element_size(dtype)),
                                             dtype=dtype, _internal=True)  # fmt: skip
        pending[key] = (storage, numel)
        return storage

    with open(path, "rb") as handle:
        unpickler = _RestrictedUnpickler(handle, load_storage, record_prefixes)
        if unpickler.load() != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a torch checkpoint (wrong magic number)")
        unpickler.load()  # protocol version
        sys_info = unpickler.load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointError(f"{path}: big-endian checkpoint; re-save it on a little-endian machine")
        content = unpickler.load()
        keys = unpickler.load()
        for key in keys:
            storage, numel = pending[str(key)]
            header = handle.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path}: truncated (storage {key} missing)")
            count = struct.unpack("<q", header)[0]
            nbytes = count * _element_size(storage.dtype)
            data = handle.read(nbytes)
            if count != numel or len(data) != nbytes:
                raise CheckpointError(f"{path}: truncated or corrupt storage {key}")
            storage._untyped_storage.copy_(_typed_storage(data, storage.dtype)._untyped_storage)
    return _finish_arrays(content, {})


def load_records(
    path: str | os.PathLike, record_prefixes: tuple[str, ...] = RECORD_PREFIXES, what: str = "a YOLOv5 checkpoint"
) -> Any:
    """Read a ``torch.save`` file into plain data and ``LegacyRecord`` objects; no code from it runs.

    Only the fixed globals above are resolved (tensor and numpy rebuilders, containers); every class under
    ``record_prefixes`` becomes an inert record (its name and pickled state); anything else is refused.

    Args:
        path: A ``.pt`` written by ``torch.save`` (zip archive or the pre-1.6 format).
        record_prefixes: Module prefixes whose classes are read as records.
        what: What the file should be, for the refusal message.

    Returns:
        (Any): The checkpoint content, e.g. a dict with a ``model`` record of class ``models.yolo.Model``.

    Raises:
        CheckpointError: Missing / empty / truncated / corrupt file, or a pickle naming a global outside the
            allow-list (the message names it; nothing was executed).
    """
    path = check_readable(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, record_prefixes)
        with open(path, "rb") as handle:
            head = handle.read(4)
        if head == b"PK\x03\x04":
            raise CheckpointError(f"{path}: truncated or corrupt zip archive (no central directory)")
        if head[:1] != b"\x80" and tarfile.is_tarfile(path):
            raise CheckpointError(f"{path}: legacy tar checkpoint (torch < 0.4); load and re-save it with torch 1.x")
        return _load_legacy(path, record_prefixes)
    except CheckpointError:
        raise
    except RefusedGlobal as error:
        raise CheckpointError(
            f"{path}: refused to load: the pickle imports {error.qualname!r}, which {what} never needs "
            "(nothing was executed)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, OSError, RuntimeError, MemoryError, RecursionError) as error:  # fmt: skip
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable: {detail})") from None


def load_legacy_pickle(path: str | os.PathLike) -> Any:
    """Read a YOLOv5-repository checkpoint into plain data and records (``load_records`` with YOLOv5's classes)."""
    return load_records(path)
