"""Safe checkpoint loading, at the bottom of the package: no code from a file ever runs, every size is bounded.

``read_checkpoint(path)`` returns plain data, tensors, numpy values, ``Record`` objects (class name + pickled state),
``NamedReference`` / ``Namespace`` values, and the globals the pickle named (one pass over the file).
Guarantees (``tests/test_hostile_files.py``; each bound at its limit in ``tests/test_loader_bounds.py``):

* nothing named by the file is called except the validating rebuilders of ``allowlist.ALLOWED``;
* every declared size (zip records, storages, tensors) is checked against the file's size before allocation; the
  tensors' total logical size (every use of a tensor, every path to a shared layer's) is at most twice the file
  plus 256 MiB, the pickle at most 64 MiB; zip records are stored or deflated, summed and non-overlapping;
* every zip record's CRC-32 is checked (in mode ``"mmap-nocrc"``: the pickle's and the small records', not the
  storages'); storages are never left uninitialised;
* time is linear in the file size: one ``Transform`` visits each shared object once; keys cannot be made to collide
  (integers below 2**32) and no integer beyond 128 bits reaches arithmetic.

Modes (``LOAD_MODES``): ``"copy"`` (storages read into memory, as ``torch.load``), ``"mmap"`` (copy-on-write views of
a private mapping of the file, every CRC-32 checked before returning; the file must not be truncated while the views
live: a read past its new end is a SIGBUS) and ``"mmap-nocrc"`` (the same views, storages' CRC-32s unchecked, every
bound still checked). ``FOCUS_SURGERY_LOAD_MODE`` replaces the default, never an explicit ``mode``.
``allow_records(module, reason)`` admits more record modules.
"""

from __future__ import annotations

import os
import pickle
import stat
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

from .allowlist import allow_records
from .containers import LOAD_MODES, LoadStats, read_container
from .errors import CheckpointError, Refused
from .loaded import Checkpoint, Loaded
from .rebuilders import ArraySpec, DtypeSpec
from .records import NamedReference, Namespace, PathText, Record, namespace_class, record_class
from .unpickler import RestrictedUnpickler
from .walk import MAX_DEPTH, Transform

__all__ = [
    "MAX_DEPTH",
    "LOAD_MODES",
    "Checkpoint",
    "CheckpointError",
    "LoadStats",
    "Loaded",
    "NamedReference",
    "Namespace",
    "PathText",
    "Record",
    "Transform",
    "allow_records",
    "check_readable",
    "load_mode",
    "namespace_class",
    "read_checkpoint",
    "record_class",
]


def check_readable(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a non-empty readable regular file, else raise CheckpointError saying why."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it ({error.strerror or error})") from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{path}: not a regular file (a device or pipe); give a checkpoint file")
    if info.st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: not readable (check its permissions)")
    return path


def _finish(content: Any, unpickler: RestrictedUnpickler) -> Any:
    """numpy descriptions become validated numpy values; our rebuilders, markers and record classes that the file left
    as values become named references (an output never holds a function of ours or a class of the file's)."""
    names = unpickler.names_of_handed_out()

    def finish(obj: Any) -> Any:
        if isinstance(obj, ArraySpec):
            return obj.to_numpy(unpickler.budgets)
        if isinstance(obj, DtypeSpec):
            return obj.to_numpy()
        if id(obj) in names:
            return NamedReference(names[id(obj)])
        if isinstance(obj, type) and issubclass(obj, Record):
            return NamedReference(obj.qualname)
        return obj

    return Transform(finish)(content)


# what a malformed file makes the reading raise (KeyError, IndexError: LookupError; RecursionError: RuntimeError)
_UNREADABLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError, AttributeError, struct.error)
_UNREADABLE += (zipfile.BadZipFile, OSError, RuntimeError, MemoryError, ArithmeticError, zlib.error)  # bad deflate
MODE_VARIABLE = "FOCUS_SURGERY_LOAD_MODE"


def load_mode(mode: str | None = None, default: str = "copy") -> str:
    """``mode`` if given, else ``$FOCUS_SURGERY_LOAD_MODE``, else ``default``; CheckpointError if not in LOAD_MODES."""
    chosen = mode or os.environ.get(MODE_VARIABLE) or default
    if chosen not in LOAD_MODES:
        where = f"{MODE_VARIABLE}={chosen}" if mode is None else f"mode {chosen!r}"
        raise CheckpointError(f"unknown loader {where}; use one of {', '.join(LOAD_MODES)}")
    return chosen


def read_checkpoint(path: str | os.PathLike, mode: str | None = None) -> Loaded:
    """Read a ``torch.save`` file into plain data and records; nothing named by the file runs.

    Args:
        path: The file.
        mode: ``"copy"``, ``"mmap"`` or ``"mmap-nocrc"`` (see the module's docstring); None: ``load_mode()``.

    Raises:
        CheckpointError: Missing, empty, truncated, corrupt or hostile file; one line naming the file and the
            problem (a refused global is named; nothing was executed).
    """
    path = check_readable(path)
    file_size = path.stat().st_size
    stats = LoadStats(load_mode(mode))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notes would turn one error into several lines
            content, unpickler, container = read_container(path, file_size, stats.mode, stats)
            content = _finish(content, unpickler)
    except CheckpointError:
        raise
    except Refused as error:
        raise CheckpointError(f"{path}: refused to load: {error} (nothing was executed)") from None
    except _UNREADABLE as error:
        text = str(error).strip()
        detail = text.splitlines()[0][:160] if text else type(error).__name__
        if isinstance(error, zipfile.BadZipFile) and "CRC" in text:
            raise CheckpointError(f"{path}: {detail}; the file is corrupt") from None
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable: {detail})") from None
    globals_seen = frozenset(unpickler.globals_seen)
    return Loaded(path, content, globals_seen, container, protocol=getattr(unpickler, "proto", 2), stats=stats)
