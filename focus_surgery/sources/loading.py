"""One safe load per file, and what it read: the content (inert records in place of objects) and the globals named.

Every source recognises a file from this, never from a second read or scan of the file. The records and the names
come from the safe loader (``focus_surgery.loader``); a source that wants live layers asks for
``Loaded.checkpoint()``, which rebuilds the records of installed layer classes without running their code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint_io import Checkpoint, as_checkpoint, check_readable, load_checkpoint
from ..loader import read_checkpoint
from ..loader.allowlist import is_record_module
from ..loader.layers import materialize


@dataclass
class Loaded:
    """A file as the safe loader read it.

    Attributes:
        path (Path): The file.
        content (Any): What was read: containers, tensors, numpy arrays and ``Record`` objects.
        names (frozenset[str]): The classes (and functions) of layer packages the pickle named, read as records
            (``module.qualname``); tensor rebuilders and containers are not listed.
        metadata (dict): String metadata (safetensors header), else empty.
    """

    path: Path
    content: Any
    names: frozenset = frozenset()
    metadata: dict = field(default_factory=dict)
    _checkpoint: Checkpoint | None = None

    def named(self, *prefixes: str) -> bool:
        """Whether the pickle named any global starting with one of ``prefixes``."""
        return any(n.startswith(prefixes) for n in self.names)

    def checkpoint(self) -> Checkpoint:
        """The content with installed layer classes rebuilt as live modules (once; the records are consumed).

        Raises:
            CheckpointError: A record of a class that is not installed, or content that is not a checkpoint.
        """
        if self._checkpoint is None:
            self._checkpoint = as_checkpoint(self.path, materialize(self.content, self.path), self.metadata)
        return self._checkpoint


def load(path: str | os.PathLike) -> Loaded:
    """Read ``path`` once, safely (no code from it runs).

    Raises:
        CheckpointError: Missing, empty, corrupt, truncated or hostile file (one line naming the file).
    """
    path = check_readable(path)
    if path.suffix == ".safetensors":
        ckpt = load_checkpoint(path)
        return Loaded(path, ckpt.content, frozenset(), ckpt.metadata, ckpt)
    loaded = read_checkpoint(path)
    classes = frozenset(n for n in loaded.globals if is_record_module(n.rpartition(".")[0]))  # not the rebuilders
    return Loaded(path, loaded.content, classes)
