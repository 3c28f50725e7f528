"""Content read as records written back in the pickle layout it came from, without importing any class it names
(``loader.pickler``), so the family's own code loads the file as if it had written it."""

from __future__ import annotations

import os
from typing import Any

from ..checkpoint_io import atomic_write, torch_save
from ..loader import Loaded


def save_records(content: Any, destination: str | os.PathLike, like: Loaded | None = None) -> None:
    """``torch.save`` of ``content`` (records included) to ``destination``, atomically; with ``like`` (the input as
    read) in its container, protocol and spelling of globals."""
    atomic_write(destination, lambda tmp: torch_save(content, tmp, like))


__all__ = ["save_records"]
