"""Write content read as records back in the pickle layout it came from, without importing any class it names.

A record (``Record``) is pickled exactly as ``torch.save`` pickles the module it stands for: the class as a
``GLOBAL`` of its original name, ``NEWOBJ`` (no constructor call on load) and its attribute dict as state; references,
namespaces and paths are written back as the file pickled them (``loader.pickler``). The family's own code
(``attempt_load``, ``torch.load(weights_only=False)``) then loads the file as if it had written it.
"""

from __future__ import annotations

import os
from typing import Any

from ..checkpoint_io import atomic_write, torch_save
from ..loader import Loaded
from ..loader.pickler import FaithfulPickler, pickle_module

PICKLE_MODULE = pickle_module()


def save_records(content: Any, destination: str | os.PathLike, like: Loaded | None = None) -> None:
    """``torch.save`` of ``content`` (records included) to ``destination``, atomically; with ``like`` (the input as
    read) in its container, protocol and spelling of globals."""
    atomic_write(destination, lambda tmp: torch_save(content, tmp, like))


__all__ = ["PICKLE_MODULE", "FaithfulPickler", "save_records"]
