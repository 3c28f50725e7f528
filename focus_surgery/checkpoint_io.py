"""Checkpoint I/O: safe loading (no code runs from a file), atomic saving.

A ``.pt`` file is a pickle, and unpickling can run any code. We never unpickle with ``pickle`` or
``torch.load(weights_only=False)``: a restricted unpickler (``yolov5/unpickler.py``) resolves only tensor rebuilders
and containers, reads every layer class as an inert record and refuses every other global by name; records of
installed layer classes are then rebuilt without running their constructors. Writes go to a temporary file in the
destination folder and are renamed into place, so a failed or interrupted write never leaves a partial file and
never touches the source.
"""

from __future__ import annotations

import importlib
import os
import pickletools
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

# Layer classes a model checkpoint may hold. They are rebuilt without running any of their code (no constructor,
# no function from the file): ``__new__`` plus the pickled attributes, as ``torch.nn.Module.__setstate__`` does.
MODULE_PREFIXES = (
    "torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks.", "focus_surgery.", "timm.layers.",
    "timm.models.",
)  # fmt: skip


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path (Path): Where it came from.
        kind (str): ``"state_dict"`` (tensors only), ``"ultralytics"`` (a dict with a pickled ``model``).
        content (Any): What was loaded (a dict).
        metadata (dict): Non-tensor entries worth keeping (safetensors metadata, training info).
    """

    path: Path
    kind: str
    content: Any
    metadata: dict = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module | None:
        """The model object of a full checkpoint (EMA first, as Ultralytics does), else None."""
        if isinstance(self.content, dict):
            for key in ("ema", "model"):
                if isinstance(self.content.get(key), torch.nn.Module):
                    return self.content[key]
        return None

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors: the model's state dict, or the file itself for a plain state dict."""
        if self.model is not None:
            return self.model.state_dict()
        content = self.content
        if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
            content = content["state_dict"]
        return {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}


def check_readable(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a non-empty readable file, else raise CheckpointError saying why."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: not readable (check its permissions)")
    return path


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a torch zip archive (``*/data.pkl``) or of a legacy / plain pickle file."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith("data.pkl")]
                if not names:
                    raise CheckpointError(f"{path}: zip archive without data.pkl, not a torch checkpoint")
                return [archive.read(names[0])]
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise CheckpointError(f"{path}: corrupt zip archive ({error})") from None
    data = path.read_bytes()
    if data[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path}: truncated or corrupt zip archive (no central directory); re-download or re-save it")
    return [data]


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """Every global (``module.name``) the checkpoint's pickle would import, found statically; nothing executes.

    Legacy (pre-zip) torch files hold several pickles in a row; all are scanned.
    """
    path = check_readable(path)
    found: list[str] = []
    for data in _pickle_streams(path):
        offset = 0
        while offset < len(data):
            strings: list[str] = []
            try:
                for opcode, arg, pos in pickletools.genops(data[offset:]):
                    if opcode.name == "GLOBAL":
                        module, _, name = arg.partition(" ")
                        found.append(f"{module}.{name}")
                    elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                        strings.append(arg)
                    elif opcode.name == "STACK_GLOBAL":
                        if len(strings) < 2:
                            raise CheckpointError(f"{path}: unreadable pickle (STACK_GLOBAL without names)")
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif opcode.name == "STOP":
                        offset += pos + 1
                        break
                else:
                    break
            except ValueError as error:  # unknown opcode, truncated stream, bad string
                if offset == 0:
                    raise CheckpointError(f"{path}: not a torch checkpoint or pickle (unreadable: {error})") from None
                break  # legacy format: raw storage bytes follow the pickles
    return found


def _module_class(qualname: str, path: Path) -> type[torch.nn.Module]:
    """The installed layer class named ``qualname``; never a function, never a class defined elsewhere."""
    module_name, _, name = qualname.rpartition(".")
    if "__main__" in module_name.split("."):  # importing a __main__ runs a program
        raise CheckpointError(f"{path}: refused to load: {qualname!r} is not a layer class (nothing was executed)")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path}: needs {qualname!r}, which is not installed here") from None
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module) and f"{cls.__module__}.".startswith(MODULE_PREFIXES)):
        raise CheckpointError(f"{path}: refused to load: {qualname!r} is not a layer class (nothing was executed)")
    return cls


def _materialize(value: Any, path: Path, memo: dict[int, Any]) -> Any:
    """Turn the inert records of ``load_records`` into real layers: ``__new__`` + ``__setstate__``, no constructor."""
    from .yolov5.unpickler import LegacyRecord

    if id(value) in memo:
        return memo[id(value)]
    if isinstance(value, LegacyRecord):
        if value.args:
            raise CheckpointError(f"{path}: refused to load: {value.qualname} built with arguments (nothing was executed)")
        cls = _module_class(value.qualname, path)
        module = cls.__new__(cls)
        memo[id(value)] = module  # before the state: modules may refer to each other
        module.__setstate__(_materialize(value.state, path, memo))
        return module
    if isinstance(value, dict):
        memo[id(value)] = value
        for key in list(value):
            value[key] = _materialize(value[key], path, memo)
        return value
    if isinstance(value, list):
        memo[id(value)] = value
        value[:] = [_materialize(v, path, memo) for v in value]
        return value
    if isinstance(value, tuple):
        return type(value)(_materialize(v, path, memo) for v in value) if type(value) is tuple else value
    return value


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a ``.pt`` / ``.pth`` / ``.safetensors`` checkpoint without running code from it.

    The pickle is read by a restricted unpickler that resolves only tensor rebuilders and containers and reads
    every layer class as an inert record; records of installed layer classes (``MODULE_PREFIXES``) are then
    rebuilt without calling their constructors. Anything else is refused by name.

    Raises:
        CheckpointError: Missing, empty, corrupt, truncated or hostile file (naming the refused global), or a
            checkpoint that needs a module that is not installed.
    """
    from .yolov5.unpickler import load_records

    path = check_readable(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        content = _materialize(load_records(path, MODULE_PREFIXES, "a model checkpoint"), path, {})
    except RecursionError:
        raise CheckpointError(f"{path}: not a torch checkpoint (nested too deeply)") from None
    if isinstance(content, dict) and any(isinstance(content.get(k), torch.nn.Module) for k in ("model", "ema")):
        metadata = {k: v for k, v in content.items() if k not in ("model", "ema", "optimizer")}
        return Checkpoint(path, "ultralytics", content, metadata)
    if isinstance(content, dict) and all(isinstance(k, str) for k in content):
        return Checkpoint(path, "state_dict", content)
    raise CheckpointError(f"{path}: holds a {type(content).__name__}, not a state dict or a model checkpoint")


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors file ({str(error).splitlines()[0]})") from None
    return Checkpoint(path, "state_dict", tensors, dict(metadata))


def atomic_write(destination: str | os.PathLike, write: Callable[[str], None], fsync: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``destination``; on any failure remove it.

    ``fsync=False`` skips flushing the file to disk before the rename: still atomic for a failed or interrupted run,
    but not across a power loss; it saves the disk write time (about 2x ``torch.save``'s time for a large file).

    Raises:
        CheckpointError: The destination folder is missing or not writable.
    """
    destination = Path(destination)
    folder = destination.parent if str(destination.parent) else Path(".")
    if destination.is_dir():
        raise CheckpointError(f"{destination}: is a directory; give a file name to write")
    if not folder.is_dir():
        raise CheckpointError(f"{destination}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CheckpointError(f"{destination}: folder {folder} is not writable")
    handle, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=folder)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should get the usual permissions
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as done:
                os.fsync(done.fileno())
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return destination


def save_checkpoint(
    content: Any, destination: str | os.PathLike, metadata: dict[str, str] | None = None, fsync: bool = True
) -> Path:
    """Save atomically: ``.safetensors`` for a dict of tensors (with string metadata), else ``torch.save``."""
    if Path(destination).suffix == ".safetensors":
        from safetensors.torch import save_file

        tensors = {k: v.contiguous() for k, v in content.items()}
        return atomic_write(destination, lambda tmp: save_file(tensors, tmp, metadata=metadata), fsync)
    return atomic_write(destination, lambda tmp: torch.save(content, tmp), fsync)
