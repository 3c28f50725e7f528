"""Inert stand-ins for what a checkpoint pickles (records of classes, references, data-only values); none runs code
named by a file, none can be pickled by the standard pickler (``loader.pickler`` writes them back as they were read).
"""

from __future__ import annotations

import copy
import functools
import pickle
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch

from .errors import Refused


class Record:
    """An object read from a checkpoint, kept as data: the name of its class and its pickled state.

    Attributes:
        qualname (str): ``module.Class`` as written in the file, e.g. ``models.common.Focus``.
        state (dict): The pickled ``__dict__`` (for modules: ``_parameters``, ``_buffers``, ``_modules``, ...).
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        if args or kwargs:  # a constructor call with arguments is behaviour, not data
            raise Refused(f"{cls.qualname} built with arguments")
        obj = object.__new__(cls)
        obj.state = {}
        obj.pickled_by = "newobj"  # how the file built it: "newobj", "reduce" (cls()) or "reconstructor"
        obj.slot_keys = None  # state pickled as (dict, slots): the slot attributes' names (and whether a dict came)
        return obj

    def __setstate__(self, state) -> None:
        pair = isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict)
        if pair and (state[0] is None or isinstance(state[0], dict)):  # (dict state, slot state); other pairs: whole
            self.slot_keys = (isinstance(state[0], dict), tuple(state[1]))
            self.state.update(state[0] or {})
            self.state.update(state[1])
        elif isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __reduce__(self):
        raise TypeError(f"a {self.qualname} record is data read from a checkpoint; it cannot be pickled")

    def __deepcopy__(self, memo: dict) -> Record:
        """The same class, built the same way, its state copied (never through ``__reduce__``)."""
        new = memo[id(self)] = object.__new__(type(self))
        new.pickled_by, new.slot_keys = self.pickled_by, self.slot_keys
        new.state = copy.deepcopy(self.state, memo)
        return new

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"

    @property
    def name(self) -> str:
        """The class name alone, e.g. ``Focus``."""
        return self.qualname.rpartition(".")[2]

    def get(self, key: str, default: Any = None) -> Any:
        """``state.get``: one attribute of the pickled object."""
        return self.state.get(key, default)

    def children(self) -> dict[str, Record]:
        """Sub-module records in registration order (``_modules``), skipping empty slots and non-records."""
        modules = self.state.get("_modules")
        return {str(k): v for k, v in modules.items() if isinstance(v, Record)} if isinstance(modules, dict) else {}

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Record]]:
        """(path, record) for this record and every sub-module, depth first; each shared record once, as
        ``nn.Module.named_modules`` does."""
        seen: set[int] = set()
        stack: list[tuple[str, Record]] = [(prefix, self)]
        while stack:
            path, record = stack.pop()
            if id(record) in seen:
                continue
            seen.add(id(record))
            yield path, record
            children = list(record.children().items())
            stack.extend((f"{path}.{name}" if path else name, child) for name, child in reversed(children))

    def state_dict(self, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
        """The tensors ``nn.Module.state_dict()`` would return (parameters, persistent buffers), by name; a
        shared sub-module contributes its tensors under its first path only."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for path, record in self.named_modules(prefix.rstrip(".")):
            non_persistent = record.state.get("_non_persistent_buffers_set") or set()
            head = f"{path}." if path else ""
            for kind in ("_parameters", "_buffers"):
                tensors = record.state.get(kind)
                for name, tensor in tensors.items() if isinstance(tensors, dict) else ():
                    if isinstance(tensor, torch.Tensor) and not (kind == "_buffers" and name in non_persistent):
                        out[head + str(name)] = tensor
        return out


def _not_pickled(self) -> None:
    # named, never shown: repr() of a shared namespace would expand every path of it
    raise TypeError(f"a {self.qualname} read from a checkpoint is written with focus_surgery.loader.pickler")


def _itself(self, memo: dict | None = None) -> Any:
    return self  # immutable: its own copy


class NamedReference:
    """A function, class or enum member a checkpoint refers to by name (e.g. ``models.yolo.Detect.forward``); never
    callable, never imported.

    Attributes:
        qualname (str): What it names, e.g. ``models.yolo.Detect.forward``.
        pickled (tuple | None): How the file pickled it, written back as read (``loader.pickler``): None for a bare
            ``GLOBAL`` of ``qualname``; ``(function_name, args)`` for a call of a global (``builtins.getattr`` with
            ``(owner, "forward")``, an enum class with ``(value,)``), names spelled as in the file.
    """

    __slots__ = ("qualname", "pickled")
    __reduce__, __copy__, __deepcopy__ = _not_pickled, _itself, _itself

    def __init__(self, qualname: str, pickled: tuple | None = None):
        self.qualname = qualname
        self.pickled = pickled

    def __repr__(self) -> str:
        return f"<reference {self.qualname}>"


class Namespace(dict):
    """A ``SimpleNamespace`` / ``argparse.Namespace`` / Ultralytics ``IterableSimpleNamespace`` read as a dict of its
    attributes; its class (``namespace_class``) remembers the name, the instance how it was built (``pickled_by``:
    ``"newobj"`` or ``"reduce"``, set by the unpickler), so that it is written back the same way."""

    qualname = "types.SimpleNamespace"
    pickled_by = "newobj"
    __reduce__ = _not_pickled

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("namespace state is not a dict")
        self.update(state)

    def __copy__(self) -> Namespace:
        new = type(self)(self)
        new.pickled_by = self.pickled_by
        return new

    def __deepcopy__(self, memo: dict) -> Namespace:
        new = memo[id(self)] = type(self)()
        new.pickled_by = self.pickled_by
        new.update(copy.deepcopy(dict(self), memo))
        return new


class PathText(str):
    """A ``pathlib`` path read as the text it holds (its class is never imported); it remembers the class the file
    named and the parts it was built from, and is written back as that path (``loader.pickler``)."""

    qualname = "pathlib.PurePosixPath"
    parts: tuple = ()
    __reduce__, __copy__, __deepcopy__ = _not_pickled, _itself, _itself


def path_text(qualname: str, parts: tuple[str, ...], text: str) -> PathText:
    value = PathText(text)
    value.qualname, value.parts = qualname, tuple(parts)
    return value


@functools.cache
def namespace_class(qualname: str) -> type[Namespace]:
    """The (cached) ``Namespace`` subclass standing for the namespace class ``qualname``."""
    return type(qualname.rpartition(".")[2], (Namespace,), {"qualname": qualname})


@functools.cache
def record_class(qualname: str) -> type[Record]:
    """The (cached) record class standing for ``qualname``; a plain subclass of ``Record``."""
    return type(qualname.rpartition(".")[2], (Record,), {"qualname": qualname})
