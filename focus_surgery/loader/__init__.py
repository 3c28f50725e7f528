"""Safe checkpoint loading, at the bottom of the package: no code from a file ever runs, every size is bounded.

``read_checkpoint(path)`` returns plain data: containers, tensors, numpy values, ``Record`` objects for classes
(name + pickled state), ``NamedReference`` / ``Namespace`` values for data-only objects - and the set of globals the
pickle named, from which checkpoint sources recognise their family (one pass over the file). ``loader.layers``
rebuilds records of installed layer classes into real modules from validated hyper-parameters.

Guarantees (tested in ``tests/test_hostile_files.py``):

* nothing named by the file is called except the validating rebuilders of ``allowlist.GLOBALS``;
* every declared size (zip records, storages, tensors) is checked against the file's size before allocation; the
  tensors' total logical size is at most twice the file plus 256 MiB, the pickle at most 64 MiB;
* every zip record's CRC-32 is checked; storages are never left uninitialised;
* time is linear in the file size: traversals visit each shared object once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import struct
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .containers import read_container
from .errors import CheckpointError, Refused
from .rebuilders import ArraySpec, DtypeSpec
from .records import NamedReference, Namespace, Record, record_class
from .unpickler import RestrictedUnpickler
from .walk import MAX_DEPTH, objects, walk

__all__ = [
    "CheckpointError",
    "Loaded",
    "NamedReference",
    "Namespace",
    "Record",
    "check_readable",
    "MAX_DEPTH",
    "objects",
    "read_checkpoint",
    "reading_once",
    "record_class",
    "walk",
]


@dataclass
class Loaded:
    """What ``read_checkpoint`` read.

    Attributes:
        path (Path): The file.
        content (Any): Plain data, tensors and records.
        globals (frozenset[str]): Every ``module.name`` the pickle named.
        container (str): ``"zip"`` (torch >= 1.6) or ``"legacy"``.
    """

    path: Path
    content: Any
    globals: frozenset
    container: str


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
    """Turn what only the unpickler needed into plain values, once per shared object.

    numpy array and dtype descriptions become validated numpy values; the loader's own rebuilders, markers and
    record classes, where a file left them as values instead of calling them, become named references (an output
    must never hold a function of ours or a class of the file's).
    """
    names = unpickler.names_of_handed_out()
    done: dict[int, Any] = {}

    def finish(obj: Any) -> Any:
        key = id(obj)
        if key in done:
            return done[key]
        if isinstance(obj, ArraySpec):
            done[key] = obj.to_numpy(unpickler.budgets)
        elif isinstance(obj, DtypeSpec):
            done[key] = obj.to_numpy()
        elif key in names:
            done[key] = NamedReference(names[key])
        elif isinstance(obj, type) and issubclass(obj, Record):
            done[key] = NamedReference(obj.qualname)
        elif type(obj) is tuple:
            done[key] = obj  # provisional: a tuple cannot contain itself
            done[key] = tuple(finish(v) for v in obj)
        elif type(obj) is slice:
            done[key] = slice(finish(obj.start), finish(obj.stop), finish(obj.step))
        else:
            return obj
        return done[key]

    content = finish(content)
    walk(content, finish)
    return content


_ONCE: list[dict] = []  # active ``reading_once`` caches, innermost last


@contextlib.contextmanager
def reading_once() -> Iterator[None]:
    """Within this block each file is read from disk once: later reads get a fresh copy of its containers and
    records (tensors shared), so that recognising a file's family and converting it is one pass over the file."""
    _ONCE.append({})
    try:
        yield
    finally:
        _ONCE.pop()


def _fresh_copy(value: Any, memo: dict[int, Any]) -> Any:
    """New containers and records over the same tensors and values (what a second read would give)."""
    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, Record):
        copy = memo[id(value)] = type(value).__new__(type(value))
        copy.state = _fresh_copy(value.state, memo)
        return copy
    if isinstance(value, dict):
        copy = memo[id(value)] = type(value)() if type(value) in (dict, OrderedDict, Namespace) else dict()
        copy.update((k, _fresh_copy(v, memo)) for k, v in value.items())
        if getattr(value, "__dict__", None):  # a state dict's _metadata
            copy.__dict__.update(value.__dict__)
        return copy
    if isinstance(value, list):
        copy = memo[id(value)] = []
        copy.extend(_fresh_copy(v, memo) for v in value)
        return copy
    if type(value) is tuple:
        memo[id(value)] = tuple(_fresh_copy(v, memo) for v in value)
        return memo[id(value)]
    if isinstance(value, set):
        memo[id(value)] = {_fresh_copy(v, memo) for v in value}
        return memo[id(value)]
    if type(value) is slice:
        memo[id(value)] = slice(
            _fresh_copy(value.start, memo), _fresh_copy(value.stop, memo), _fresh_copy(value.step, memo)
        )
        return memo[id(value)]
    return value


def read_checkpoint(path: str | os.PathLike) -> Loaded:
    """Read a ``torch.save`` file into plain data and records; nothing named by the file runs.

    Raises:
        CheckpointError: Missing, empty, truncated, corrupt or hostile file; one line naming the file and the
            problem (a refused global is named; nothing was executed).
    """
    path = check_readable(path)
    info = path.stat()
    key = (str(path.resolve()), info.st_ino, info.st_size, info.st_mtime_ns)
    if _ONCE and key in _ONCE[-1]:
        first = _ONCE[-1][key]
        return Loaded(path, _fresh_copy(first.content, {}), first.globals, first.container)
    loaded = _read(path, info.st_size)
    if _ONCE:
        _ONCE[-1][key] = Loaded(path, _fresh_copy(loaded.content, {}), loaded.globals, loaded.container)
    return loaded


def _read(path: Path, file_size: int) -> Loaded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notes would turn one error into several lines
            content, unpickler, container = read_container(path, file_size)
            content = _finish(content, unpickler)
    except CheckpointError:
        raise
    except Refused as error:
        raise CheckpointError(f"{path}: refused to load: {error} (nothing was executed)") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        struct.error,
        zipfile.BadZipFile,
        OSError,
        RuntimeError,
        MemoryError,
        RecursionError,
        OverflowError,
        UnicodeError,
    ) as error:
        text = str(error).strip()
        detail = text.splitlines()[0][:160] if text else type(error).__name__
        if isinstance(error, zipfile.BadZipFile) and "CRC" in text:
            raise CheckpointError(f"{path}: {detail}; the file is corrupt") from None
        raise CheckpointError(f"{path}: not a torch checkpoint (unreadable: {detail})") from None
    return Loaded(path, content, frozenset(unpickler.globals_seen), container)
