"""Write content read as records back in the pickle layout it came from, without importing any class it names.

A record (``Record``) is pickled exactly as ``torch.save`` pickles the module it stands for: the class as a
``GLOBAL`` of its original name, ``NEWOBJ`` (no constructor call on load) and its attribute dict as state. The
family's own code (``attempt_load``, ``torch.load(weights_only=False)``) then loads the file as if it had written it.
"""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace
from typing import Any

import torch

from ..checkpoint_io import atomic_write
from ..loader import Record


class _RecordPickler(pickle._Pickler):
    """The pure-Python pickler, with records written under their original class names."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        is_reference = isinstance(obj, type) and issubclass(obj, Record)  # a function or class named
        if not (isinstance(obj, Record) or is_reference):
            super().save(obj, save_persistent_id)
            return
        memo = self.memo.get(id(obj))
        if memo is not None:
            self.write(self.get(memo[0]))
            return
        module, _, name = obj.qualname.rpartition(".")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("utf-8"))
        if is_reference:
            self.memoize(obj)
            return
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)  # cls.__new__(cls): no constructor runs on load
        self.memoize(obj)  # before the state: modules may refer to each other
        self.save(obj.state)
        self.write(pickle.BUILD)


PICKLE_MODULE = SimpleNamespace(Pickler=_RecordPickler, __name__="focus_surgery.sources.records_io")


def save_records(content: Any, destination: str | os.PathLike) -> None:
    """``torch.save`` of ``content`` (records included) to ``destination``, atomically."""
    atomic_write(destination, lambda tmp: torch.save(content, tmp, pickle_module=PICKLE_MODULE))
