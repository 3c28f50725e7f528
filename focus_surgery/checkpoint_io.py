"""Checkpoint I/O: safe loading (no code runs from a file), atomic saving.

A ``.pt`` file is a pickle, and unpickling can run any code. We scan the pickle's globals first, without
executing anything, and refuse every global outside an allow-list (torch modules and tensor rebuilders,
Ultralytics and focus-surgery layers, plain containers); then ``torch.load(weights_only=True)`` admits exactly
those globals. Writes go to a temporary file in the destination folder and are renamed into place, so a failed
or interrupted write never leaves a partial file and never touches the source.
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

# Module prefixes whose classes may be rebuilt from a checkpoint (none of them runs code when unpickled).
ALLOWED_MODULE_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.", "focus_surgery.", "timm.layers.", "timm.models.")
ALLOWED_GLOBALS = {
    "builtins.set", "builtins.frozenset", "builtins.slice", "builtins.getattr", "collections.OrderedDict",
    "collections.defaultdict", "_codecs.encode", "torch.Size", "torch.device", "torch.dtype", "torch.float16", "torch.float32",
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch.nn.parameter.Parameter", "torch.FloatStorage", "torch.HalfStorage", "torch.DoubleStorage",
    "torch.LongStorage", "torch.IntStorage", "torch.BFloat16Storage", "torch.BoolStorage", "torch.ByteStorage",
    "torch.storage.UntypedStorage", "torch._tensor._rebuild_from_type_v2",
}  # fmt: skip
# Names pickled under old spellings.
_RENAMED = {"__builtin__.set": "builtins.set", "__builtin__.frozenset": "builtins.frozenset"}


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


def _is_allowed(name: str) -> bool:
    name = _RENAMED.get(name, name)
    return name in ALLOWED_GLOBALS or name.startswith(ALLOWED_MODULE_PREFIXES)


def _resolve(name: str) -> Any:
    module, _, attr = _RENAMED.get(name, name).rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a ``.pt`` / ``.pth`` / ``.safetensors`` checkpoint without running code from it.

    Raises:
        CheckpointError: Missing, empty, corrupt, truncated or hostile file (naming the refused global), or a
            checkpoint that needs a module that is not installed.
    """
    path = check_readable(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    globals_ = pickle_globals(path)
    refused = list(dict.fromkeys(g for g in globals_ if not _is_allowed(g)))  # in pickle order
    if refused:
        raise CheckpointError(
            f"{path}: refused to load: the pickle imports {refused[0]!r}, which is not an allowed global "
            "(nothing was executed)" + (f" and {len(refused) - 1} more" if len(refused) > 1 else "")
        )
    classes = [_resolve(g) for g in set(globals_)]
    missing = sorted(g for g, c in zip(set(globals_), classes) if c is None)
    if missing:
        raise CheckpointError(f"{path}: needs {missing[0]!r}, which is not installed here")
    try:
        with torch.serialization.safe_globals([c for c in classes if c is not None]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt files
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: cannot load ({first_line[:200]})") from None
    if isinstance(content, dict) and isinstance(content.get("model"), torch.nn.Module):
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
