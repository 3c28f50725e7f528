"""Write what the loader read back the way the file pickled it (the inverse of ``unpickler``), so that the output's
pickle names exactly the globals of its input and a family's ``weights_only`` allow-list still loads it.

A ``Record`` is written as ``GLOBAL`` + ``NEWOBJ`` (or ``REDUCE`` of ``cls()``, or ``copyreg._reconstructor``) +
``BUILD`` of its state; a record class or ``NamedReference`` as its bare ``GLOBAL`` or the call it was read from
(``getattr(models.yolo.Detect, 'forward')``); a ``Namespace`` as its own class with ``BUILD`` state; a ``PathText`` as
``pathlib.<Class>(*parts)``. Everything else goes through the pure-Python pickler, a global the input spelled another
way (numpy 1 ``numpy.core`` vs numpy 2 ``numpy._core``) in the input's spelling. Nothing named is ever imported.
"""

from __future__ import annotations

import io
import pickle
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from .records import NamedReference, Namespace, PathText, Record

# modules that one library spells two ways across versions: (written by this installation, the other spelling)
_EQUIVALENT_MODULES = (("numpy._core", "numpy.core"), ("numpy.core", "numpy._core"))
_STAND_INS = (Record, NamedReference, Namespace, PathText)
_ATOMIC = {str, bytes, int, float, bool, type(None)}


class FaithfulPickler(pickle._Pickler):
    """The pure-Python pickler, with the loader's stand-ins written as what they stand for.

    Attributes:
        spellings (frozenset[str]): The input's globals (``Loaded.globals``): a global of equivalent spelling is
            written as the input wrote it.
    """

    spellings: frozenset = frozenset()

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        record_class = isinstance(obj, type) and issubclass(obj, Record)
        if not (record_class or isinstance(obj, _STAND_INS)):
            return super().save(obj, save_persistent_id)
        memo = self.memo.get(id(obj))
        if memo is not None:
            self.write(self.get(memo[0]))
        elif record_class:  # a class the file named as a value: memoized under its name (a second use is a GET)
            self.write_global(obj.qualname)
        elif isinstance(obj, Record):
            self._save_record(obj)
        elif isinstance(obj, NamedReference) and obj.pickled is None:
            self.write_global(obj.qualname)
        elif isinstance(obj, NamedReference):
            self._save_call(*obj.pickled, obj)
        elif isinstance(obj, PathText):
            self._save_call(obj.qualname, obj.parts, obj)
        else:  # a namespace, built as it was read; an empty object has no state (SimpleNamespace reduces with one)
            self.write_global(obj.qualname)
            self.write(pickle.EMPTY_TUPLE + (pickle.REDUCE if obj.pickled_by == "reduce" else pickle.NEWOBJ))
            self.memoize(obj)
            if obj or obj.pickled_by == "reduce":
                self.save(dict(obj))
                self.write(pickle.BUILD)

    def write_global(self, qualname: str) -> None:
        """The global ``module.name`` exactly as spelled (the input's spelling), in this protocol's opcode, memoized
        under its name as pickle memoizes a class (a second use is a ``GET``)."""
        names = self.__dict__.setdefault("_names", {})  # qualname -> the key object its memo entry is held under
        key = names.setdefault(qualname, [qualname])
        if id(key) in self.memo:
            self.write(self.get(self.memo[id(key)][0]))
            return
        module, _, name = qualname.rpartition(".")
        if self.proto >= 4:  # one text object per module name, memoized once, as a class's __module__ is
            texts = self.__dict__.setdefault("_texts", {})
            self.save(texts.setdefault(module, module))
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("utf-8"))
        self.memoize(key)

    def _save_call(self, function: str, args: tuple, obj: Any) -> None:
        self.write_global(function)
        self.save(tuple(args))
        self.write(pickle.REDUCE)
        if id(obj) in self.memo:  # met again inside its own arguments (a reference in its owner's state): shared
            self.write(pickle.POP + self.get(self.memo[id(obj)][0]))
        else:
            self.memoize(obj)

    def _spelled(self, *names: str) -> str:
        """The one of ``names`` (Python 3's spelling, then Python 2's) the input used; else the one pickle writes in
        this protocol (Python 2's below protocol 3)."""
        return next((n for n in names if n in self.spellings), names[0] if self.proto >= 3 else names[-1])

    def _save_record(self, record: Record) -> None:
        if record.pickled_by == "reconstructor":  # protocol 0/1: copyreg._reconstructor(cls, object, None)
            self.write_global(self._spelled("copyreg._reconstructor", "copy_reg._reconstructor"))
            self.write(pickle.MARK if self.proto < 2 else b"")
            self.write_global(record.qualname)
            self.write_global(self._spelled("builtins.object", "__builtin__.object"))
            self.write(pickle.NONE + (pickle.TUPLE if self.proto < 2 else pickle.TUPLE3))
            self.memoize((record.qualname, "object", None))  # the argument tuple, memoized as pickle does
            self.write(pickle.REDUCE)
        else:
            self.write_global(record.qualname)
            self.write(pickle.EMPTY_TUPLE + (pickle.REDUCE if record.pickled_by == "reduce" else pickle.NEWOBJ))
        self.memoize(record)  # before the state: modules may refer to each other
        state: Any = record.state
        if set(state) == {"__state__"}:
            state = state["__state__"]
        elif record.slot_keys is not None:  # pickled as (dict state, slot state)
            had_dict, slots = record.slot_keys
            main = {k: v for k, v in state.items() if k not in slots}
            state = (main if had_dict or main else None, {k: state[k] for k in slots if k in state})
        self.save(state)
        self.write(pickle.BUILD)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        qualname = name or getattr(obj, "__qualname__", None)
        module = getattr(obj, "__module__", None)
        if isinstance(qualname, str) and isinstance(module, str) and self.spellings:
            for ours, theirs in _EQUIVALENT_MODULES:
                if (module == ours or module.startswith(ours + ".")) and f"{module}.{qualname}" not in self.spellings:
                    spelled = theirs + module[len(ours) :] + "." + qualname
                    if spelled in self.spellings:
                        self.write_global(spelled)
                        return
        super().save_global(obj, name)


def needs_faithful(content: Any) -> bool:
    """Whether ``content`` holds a stand-in or a numpy value (numpy spells its module two ways), which the standard
    (C, faster) pickler would write differently from the input; each shared object is visited once."""
    seen: set[int] = set()
    stack = [content]
    while stack:
        obj = stack.pop()
        if isinstance(obj, _STAND_INS) or (isinstance(obj, type) and issubclass(obj, Record)):
            return True
        if type(obj) in _ATOMIC or isinstance(obj, torch.Tensor) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (np.ndarray, np.generic)):
            return True
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, slice):  # the loader builds slices of anything
            stack.extend((obj.start, obj.stop, obj.step))
        elif not isinstance(obj, type) and isinstance(getattr(obj, "__dict__", None), dict):
            stack.extend(vars(obj).values())  # a live module's attributes (Ultralytics' model.args)
    return False


def dumps(
    content: Any,
    persistent_id: Callable[[Any], Any] | None = None,
    protocol: int = 2,
    spellings: frozenset = frozenset(),
) -> bytes:
    """``content`` pickled as the file it was read from pickled it (see the module docstring).

    Args:
        content: What the loader read (records, references, namespaces, paths, tensors, plain data).
        persistent_id: ``obj -> id or None`` (``torch.save``'s storages), as ``pickle.Pickler.persistent_id``.
        protocol: The input's pickle protocol (``Loaded.protocol``).
        spellings: The input's globals (``Loaded.globals``).
    """
    buffer = io.BytesIO()
    if needs_faithful(content):
        pickler = FaithfulPickler(buffer, protocol)
        pickler.spellings = frozenset(spellings)
    else:  # nothing the standard pickler writes differently: the C pickler, same bytes, faster
        pickler = pickle.Pickler(buffer, protocol)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id
    pickler.dump(content)
    return buffer.getvalue()


def pickle_module(spellings: frozenset = frozenset()) -> SimpleNamespace:
    """What ``torch.save(..., pickle_module=...)`` takes (zip and legacy containers): a ``Pickler`` that writes the
    stand-ins back (``FaithfulPickler``), and ``dump`` for the legacy container's header pickles."""
    pickler = type("FaithfulPickler", (FaithfulPickler,), {"spellings": frozenset(spellings)})

    def dump(obj: Any, file: Any, protocol: int = 2) -> None:
        pickler(file, protocol).dump(obj)

    return SimpleNamespace(Pickler=pickler, dump=dump, __name__="focus_surgery.loader.pickler")


__all__ = ["FaithfulPickler", "dumps", "needs_faithful", "pickle_module"]
