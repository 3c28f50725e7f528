"""One safe load per file, and what it read: the content (inert records in place of objects) and the globals named.

Every source recognises a file from this, never from a second read or scan of the file. The records come from the
safe unpickler (``load_records``); a source that wants live layers asks for ``Loaded.checkpoint()``, which rebuilds
the records of installed layer classes without running their code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint_io import MODULE_PREFIXES, Checkpoint, CheckpointError, check_readable, load_checkpoint

# Classes read as records: installed layer classes, plus the model zoos' own (never imported, never run).
ZOO_PREFIXES = ("models.yolo.", "models.common.", "models.experimental.")
RECORD_PREFIXES = MODULE_PREFIXES + ZOO_PREFIXES


@dataclass
class Loaded:
    """A file as the safe loader read it.

    Attributes:
        path (Path): The file.
        content (Any): What was read: containers, tensors, numpy arrays and ``LegacyRecord`` objects.
        names (frozenset[str]): The classes and functions the pickle named (``module.qualname``).
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
            from ..checkpoint_io import _materialize  # the loader's rebuild step; public once focus_surgery.loader lands

            content = _materialize(self.content, self.path, {})
            if isinstance(content, dict) and any(isinstance(content.get(k), torch.nn.Module) for k in ("model", "ema")):
                metadata = {k: v for k, v in content.items() if k not in ("model", "ema", "optimizer")}
                self._checkpoint = Checkpoint(self.path, "ultralytics", content, metadata)
            elif isinstance(content, dict) and all(isinstance(k, str) for k in content):
                self._checkpoint = Checkpoint(self.path, "state_dict", content, dict(self.metadata))
            else:
                raise CheckpointError(f"{self.path}: holds a {type(content).__name__}, not a state dict or a model checkpoint")
        return self._checkpoint


def _named_globals(value: Any, found: set[str], seen: set[int]) -> None:
    from ..yolov5.unpickler import LegacyRecord

    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, LegacyRecord):
        found.add(value.qualname)
        _named_globals(value.state, found, seen)
    elif isinstance(value, type) and issubclass(value, LegacyRecord):  # a reference (e.g. a hook function)
        found.add(value.qualname)
    elif isinstance(value, dict):
        for item in value.values():
            _named_globals(item, found, seen)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _named_globals(item, found, seen)


def load(path: str | os.PathLike) -> Loaded:
    """Read ``path`` once, safely (no code from it runs).

    Raises:
        CheckpointError: Missing, empty, corrupt, truncated or hostile file (one line naming the file).
    """
    from ..yolov5.unpickler import load_records

    path = check_readable(path)
    if path.suffix == ".safetensors":
        ckpt = load_checkpoint(path)
        return Loaded(path, ckpt.content, frozenset(), ckpt.metadata, ckpt)
    try:
        content = load_records(path, RECORD_PREFIXES, "a model checkpoint")
    except RecursionError:
        raise CheckpointError(f"{path}: not a torch checkpoint (nested too deeply)") from None
    found: set[str] = set()
    _named_globals(content, found, set())
    return Loaded(path, content, frozenset(found))
