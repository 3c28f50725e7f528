"""Checkpoint I/O: safe loading (no code runs from a file; ``loader`` reads the pickle into plain data and inert
records) and atomic saving (``atomic_io``: no partial file, the source never touched).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .atomic_io import atomic_write
from .loader import Checkpoint, CheckpointError, Loaded, check_readable, read_checkpoint
from .loader.allowlist import MODULE_PREFIXES  # noqa: F401 - re-exported
from .loader.pickler import needs_faithful, pickle_module


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a ``.pt`` / ``.pth`` / ``.safetensors`` checkpoint without running code from it: records of installed
    layer classes (``MODULE_PREFIXES``) are rebuilt without calling their constructors, anything else refused by name.

    Raises:
        CheckpointError: Missing, empty, corrupt, truncated or hostile file (naming the refused global), or a
            checkpoint that needs a module that is not installed.
    """
    path = check_readable(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return read_checkpoint(path).checkpoint()


def _load_safetensors(path: Path) -> Checkpoint:
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load

    data = path.read_bytes()  # bytes, not a path: file names need not be UTF-8
    try:
        size = int.from_bytes(data[:8], "little")
        if len(data) < 8 or size > len(data) - 8:
            raise ValueError("header larger than the file")
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        loaded = load(data)  # a dict in a per-process random order: put back in the file's own order
        tensors = {k: loaded[k] for k in sorted(loaded, key=lambda k: (_data_offset(header, k), k))}
    except (SafetensorError, OSError, ValueError, AttributeError, RecursionError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: corrupt safetensors file ({detail})") from None
    return Checkpoint(path, "state_dict", tensors, {str(k): str(v) for k, v in dict(metadata).items()})


def _data_offset(header: dict, key: str) -> int:
    """Where tensor ``key``'s bytes start in a safetensors file (its position in the file), 0 if not stated."""
    offsets = header.get(key, {}).get("data_offsets") if isinstance(header.get(key), dict) else None
    return offsets[0] if isinstance(offsets, list) and offsets and isinstance(offsets[0], int) else 0


def _encodable(path: str) -> bool:
    return not any("\ud800" <= c <= "\udfff" for c in path)  # only surrogates (undecodable bytes) are not UTF-8


def torch_save(content: Any, path: str, like: Loaded | None = None) -> None:
    """``torch.save`` to ``path`` (a file object where the name is not UTF-8), the loader's stand-ins written back as
    the file pickled them; with ``like`` (the input as read) in its container, pickle protocol and globals' spelling.
    """
    spellings = like.globals if like is not None else frozenset()
    faithful = needs_faithful(content)  # else the C pickler writes the same pickle, faster
    options: dict[str, Any] = {"pickle_module": pickle_module(spellings) if faithful else pickle}
    if like is not None:
        options["pickle_protocol"] = like.protocol
        options["_use_new_zipfile_serialization"] = like.container != "legacy"
    if _encodable(path):
        torch.save(content, path, **options)
    else:
        with open(path, "wb") as handle:
            torch.save(content, handle, **options)


def safetensors_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, also for names that are not valid UTF-8."""
    from safetensors.torch import save, save_file

    if _encodable(path):
        save_file(tensors, path, metadata=metadata)
    else:
        Path(path).write_bytes(save(tensors, metadata=metadata))


def save_checkpoint(
    content: Any,
    destination: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    fsync: bool = True,
    like: Loaded | None = None,
) -> Path:
    """Save atomically: ``.safetensors`` for a dict of tensors (with string metadata), else ``torch.save`` in the
    container, protocol and globals of ``like`` (the input as read; see ``torch_save``)."""
    if Path(destination).suffix == ".safetensors":
        tensors = {k: v.contiguous() for k, v in content.items()}
        return atomic_write(destination, lambda tmp: safetensors_save(tensors, tmp, metadata), fsync)
    return atomic_write(destination, lambda tmp: torch_save(content, tmp, like), fsync)
