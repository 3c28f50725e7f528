"""A restricted unpickler: only the names of ``allowlist`` resolve, only our rebuilders and inert types are called.

The pure-Python unpickler is used so that every opcode that calls or builds something (REDUCE, NEWOBJ[_EX],
OBJ, INST, BUILD) can be checked: a pickle must not call a marker, reach a torch class's hidden constructor
keywords, or set the state of anything but a fresh inert object.
"""

from __future__ import annotations

import functools
import pickle
from collections import OrderedDict
from typing import Any, Callable

from .errors import Refused
from .allowlist import ENUMS, GLOBALS, StorageType, is_record_module
from .rebuilders import ArraySpec, DtypeSpec, TensorBudget, enum_value
from .records import Namespace, Record, record_class


class RefusedGlobal(Refused):
    """The pickle names a global outside the allow-list."""

    def __init__(self, qualname: str):
        super().__init__(f"the pickle imports {qualname!r}, which no checkpoint needs")
        self.qualname = qualname


# The only objects whose state a pickle may set: fresh instances made by this load.
_BUILDABLE = (Record, DtypeSpec, ArraySpec, OrderedDict, Namespace)
_CONSTRUCTIBLE = (OrderedDict, set, frozenset, slice, Namespace, DtypeSpec)


class RestrictedUnpickler(pickle._Unpickler):
    """Resolves only allow-listed globals; storages come from ``load_storage(dtype, key, numel, view)``.

    Attributes:
        globals_seen (set[str]): Every global the pickle named (resolved or recorded) - what the file is made of.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, load_storage: Callable[..., Any], budget: TensorBudget):
        super().__init__(file, encoding="latin1")
        self._load_storage = load_storage
        self._budget = budget
        self._callables: set[int] = set()  # ids of the functions this load handed out ...
        self._handed_out: list[Any] = []  # ... kept alive, so that no other object can take their id
        self.globals_seen: set[str] = set()

    # ------------------------------------------------------------------ names

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        self.globals_seen.add(qualname)
        allowed = GLOBALS.get(qualname)
        if allowed is not None:
            value = allowed.value
            if allowed.needs_budget:
                value = functools.partial(value, self._budget)
                value._focus_surgery_tensor_rebuilder = True
            if callable(value) and not isinstance(value, type):
                self._hand_out(value)
            return value
        if qualname in ENUMS:
            return self._hand_out(enum_value(qualname))
        if name.isidentifier() and is_record_module(module):
            return record_class(qualname)
        raise RefusedGlobal(qualname)

    def _hand_out(self, func: Any) -> Any:
        self._callables.add(id(func))
        self._handed_out.append(func)
        return func

    def _check_callable(self, func: Any, opcode: str) -> None:
        if id(func) in self._callables:
            return
        if isinstance(func, type) and (issubclass(func, Record) or func in _CONSTRUCTIBLE):
            return
        raise Refused(f"{opcode} of {getattr(func, 'qualname', type(func).__name__)}, which is not callable")

    def load_reduce(self) -> None:
        self._check_callable(self.stack[-2], "REDUCE")
        pickle._Unpickler.load_reduce(self)

    def load_newobj(self) -> None:
        self._check_callable(self.stack[-2], "NEWOBJ")
        pickle._Unpickler.load_newobj(self)

    def load_newobj_ex(self) -> None:
        self._check_callable(self.stack[-3], "NEWOBJ_EX")
        if self.stack[-1]:  # keyword arguments to a constructor: the way into torch.Tensor(cdata=...)
            raise Refused("NEWOBJ_EX with keyword arguments to a constructor")
        pickle._Unpickler.load_newobj_ex(self)

    def load_obj(self) -> None:
        raise Refused("OBJ opcode (protocol 0/1 class call) is not used by torch checkpoints")

    def load_inst(self) -> None:
        raise Refused("INST opcode (protocol 0 class call) is not used by torch checkpoints")

    def load_build(self) -> None:
        if not isinstance(self.stack[-2], _BUILDABLE):
            raise Refused(f"setting the state of a {type(self.stack[-2]).__name__}")
        pickle._Unpickler.load_build(self)

    def load_ext(self, *args) -> None:
        raise Refused("pickle extension registry codes are not used by torch checkpoints")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.OBJ[0]] = load_obj
    dispatch[pickle.INST[0]] = load_inst
    dispatch[pickle.BUILD[0]] = load_build
    for _code in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_code[0]] = load_ext

    # ------------------------------------------------------------------ storages

    def persistent_load(self, pid) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unexpected persistent id {type(pid).__name__}")
        if pid[0] == "module" and len(pid) >= 2 and isinstance(pid[1], type) and issubclass(pid[1], Record):
            return pid[1]  # old torch.save stored each module class with its source text; the class is enough
        if pid[0] != "storage" or len(pid) < 5 or not isinstance(pid[1], StorageType):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid[:2])[:80]}")
        key, numel = pid[2], pid[4]
        if not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("storage with an invalid key or size")
        view = pid[5] if len(pid) > 5 else None
        return self._load_storage(pid[1].dtype, key, numel, view)
