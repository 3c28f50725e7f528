"""Inert stand-ins for the objects a checkpoint pickles: records of classes, references and data-only values.

Nothing here runs code named by a file. A ``Record`` keeps a class's qualified name and its pickled state; the
traversals walk each shared object once (a file can make a small graph whose paths are exponentially many).
"""

from __future__ import annotations

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
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(part is None or isinstance(part, dict) for part in state)
            and isinstance(state[1], dict)
        ):  # (dict state, slot state); any other pair is a state of its own, kept whole
            slots = state[1] if isinstance(state[1], dict) else {}
            self.slot_keys = (isinstance(state[0], dict), tuple(slots))
            for part in state:
                if isinstance(part, dict):
                    self.state.update(part)
        elif isinstance(state, dict):
            self.state.update(state)
        else:
            self.state["__state__"] = state

    def __reduce__(self):
        raise TypeError(f"a {self.qualname} record is data read from a checkpoint; it cannot be pickled")

    def __deepcopy__(self, memo: dict) -> Record:
        """A copy of the data (a source copies the optimizer entry before remapping it): the same class, how it was
        built, its state copied; never through ``__reduce__``."""
        import copy

        new = object.__new__(type(self))
        memo[id(self)] = new
        new.pickled_by, new.slot_keys = self.pickled_by, self.slot_keys
        new.state = copy.deepcopy(self.state, memo)
        return new

    def __repr__(self) -> str:
        return f"<record {self.qualname}>"

    @property
    def args(self) -> tuple:
        """Constructor arguments (always empty: records with arguments are refused)."""
        return ()

    @property
    def name(self) -> str:
        """The class name alone, e.g. ``Focus``."""
        return self.qualname.rpartition(".")[2]

    def get(self, key: str, default: Any = None) -> Any:
        return self.state.get(key, default)

    def children(self) -> dict[str, Record]:
        """Sub-module records in registration order (``_modules``), skipping empty slots and non-records."""
        modules = self.state.get("_modules")
        if not isinstance(modules, dict):
            return {}
        return {str(k): v for k, v in modules.items() if isinstance(v, Record)}

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
                if not isinstance(tensors, dict):
                    continue
                for name, tensor in tensors.items():
                    if isinstance(tensor, torch.Tensor) and not (kind == "_buffers" and name in non_persistent):
                        out[head + str(name)] = tensor
        return out


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

    def __init__(self, qualname: str, pickled: tuple | None = None):
        self.qualname = qualname
        self.pickled = pickled

    def __reduce__(self):
        raise TypeError(f"{self!r} is a name read from a checkpoint; write it with focus_surgery.loader.pickler")

    def __copy__(self) -> NamedReference:
        return self

    def __deepcopy__(self, memo: dict) -> NamedReference:
        return self  # immutable: a name

    def __repr__(self) -> str:
        return f"<reference {self.qualname}>"


class Namespace(dict):
    """A ``SimpleNamespace`` / ``argparse.Namespace`` / Ultralytics ``IterableSimpleNamespace`` read as a dict of its
    attributes. Each class the file named has its own subclass (``namespace_class``) that remembers the name; the
    instance remembers how it was built (``pickled_by``: ``"newobj"`` or ``"reduce"``), so that it is written back as
    the same class, the same way (``loader.pickler``)."""

    qualname = "types.SimpleNamespace"
    pickled_by = "newobj"  # set to "reduce" on the instance by the unpickler where a REDUCE built it

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("namespace state is not a dict")
        self.update(state)

    def __reduce__(self):
        raise TypeError(f"a {self.qualname} read from a checkpoint is written with focus_surgery.loader.pickler")

    def __copy__(self) -> Namespace:
        return self._like(dict(self))

    def __deepcopy__(self, memo: dict) -> Namespace:
        import copy

        new = self._like({})
        memo[id(self)] = new
        new.update(copy.deepcopy(dict(self), memo))
        return new

    def _like(self, items: dict) -> Namespace:
        new = type(self)(items)
        new.pickled_by = self.pickled_by
        return new


_NAMESPACE_CLASSES: dict[str, type] = {}


def namespace_class(qualname: str) -> type[Namespace]:
    """The (cached) ``Namespace`` subclass standing for the namespace class ``qualname``."""
    if qualname not in _NAMESPACE_CLASSES:
        _NAMESPACE_CLASSES[qualname] = type(qualname.rpartition(".")[2], (Namespace,), {"qualname": qualname})
    return _NAMESPACE_CLASSES[qualname]


class PathText(str):
    """A ``pathlib`` path read as the text it holds (a path is data; its class is never imported). It remembers the
    class the file named and the parts it was built from, and is written back as that path (``loader.pickler``)."""

    qualname = "pathlib.PurePosixPath"
    parts: tuple = ()

    def __reduce__(self):
        raise TypeError(f"a {self.qualname} read from a checkpoint is written with focus_surgery.loader.pickler")

    def __copy__(self) -> PathText:
        return self

    def __deepcopy__(self, memo: dict) -> PathText:
        return self  # immutable


def path_text(qualname: str, parts: tuple[str, ...], text: str) -> PathText:
    value = PathText(text)
    value.qualname, value.parts = qualname, tuple(parts)
    return value


_RECORD_CLASSES: dict[str, type] = {}


def record_class(qualname: str) -> type[Record]:
    """The (cached) record class standing for ``qualname``; a plain subclass of ``Record``."""
    if qualname not in _RECORD_CLASSES:
        _RECORD_CLASSES[qualname] = type(qualname.rpartition(".")[2], (Record,), {"qualname": qualname})
    return _RECORD_CLASSES[qualname]
