"""One safe load per file: sources recognise a file from its ``Loaded``, never from a second read of it."""

from __future__ import annotations

import os

from ..checkpoint_io import CheckpointError, check_readable, load_checkpoint
from ..loader import Loaded, load_mode, read_checkpoint

__all__ = ["Loaded", "load"]


def load(path: str | os.PathLike, mode: str = "mmap") -> Loaded:
    """Read ``path`` once, safely (no code from it runs): memory-mapped, every CRC-32 checked (loader mode ``mmap``;
    ``mode`` is the default that ``$FOCUS_SURGERY_LOAD_MODE`` replaces).

    Raises:
        CheckpointError: Missing, empty, corrupt, truncated or hostile file (one line naming the file).
    """
    path = check_readable(path)
    if path.suffix == ".safetensors":
        ckpt = load_checkpoint(path)
        return Loaded(path, ckpt.content, frozenset(), "safetensors", ckpt.metadata, ckpt)
    try:
        return read_checkpoint(path, load_mode(default=mode))
    except CheckpointError:
        if path.suffix.lower() != ".safetensors":
            raise
        raise CheckpointError(  # the readers, and the pair source, ask for the lower-case name (as the writers do)
            f"{path}: not a torch checkpoint; a safetensors file is read when named '.safetensors' (lower case): "
            "rename it"
        ) from None
