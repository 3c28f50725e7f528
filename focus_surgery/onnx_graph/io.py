"""Loading and saving ONNX files: one-line errors for files that are not ONNX, fail the checker or exceed protobuf's
2 GiB limit; atomic writes.

External data is untrusted input (issue 25): only main-graph initializers may keep their bytes in another file, a
regular file inside the model's folder named by a plain relative path (no ``..``, absolute path, hidden file such as
``.ssh/id_rsa``, the model file itself or symlink leading out), and exactly the declared size is read. External data
anywhere else (a Constant, a function, a subgraph) is refused: ONNX's own loader and saver would follow it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint_io import check_readable
from ..errors import ConversionError

PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot exceed 2 GiB; larger models must use external data
EXTERNAL_THRESHOLD = 1024  # bytes: initializers at least this big go to the output's data file (onnx's default)
_ALIGN = 64  # offsets of tensors in the data file we write
_INT = re.compile(r"[0-9]{1,19}")


def bounded_product(factors, limit: int) -> int:
    """The product of ``factors``, or the first partial product past ``limit`` (a hostile 2**62 x ... stops there)."""
    total = 1
    for factor in factors:
        total *= factor
        if total > limit:
            break
    return total


class OnnxSurgeryError(ConversionError):
    """Bad input or a graph this tool cannot rewrite (the CLI exits 2 with this one-line message)."""


@dataclass
class LoadedOnnx:
    """An ONNX model with every tensor in memory, and the external data files its initializers were read from."""

    model: object
    path: Path
    data_files: list[Path] = field(default_factory=list)


def read_onnx(path: str | os.PathLike, check: bool = True) -> LoadedOnnx:
    """Read ``path`` as an ONNX model (external data of its initializers read in, confined) and check it.

    Raises:
        OnnxSurgeryError: Missing, not ONNX, over 2 GiB, external data we refuse, or fails the checker.
    """
    import onnx
    from google.protobuf.message import DecodeError

    try:
        path = check_readable(path)
    except Exception as error:  # CheckpointError: same wording, our error type
        raise OnnxSurgeryError(str(error)) from None
    size = path.stat().st_size
    if size > PROTOBUF_LIMIT:
        raise OnnxSurgeryError(
            f"{path}: {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit for one ONNX file; such models keep "
            "their tensors in external data files, which this tool does not rewrite"
        )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise OnnxSurgeryError(
            f"{path}: not an ONNX model ({str(error).splitlines()[0] if str(error) else 'parse error'})"
        ) from None
    if model.ir_version == 0 or not model.HasField("graph") or not model.graph.node:
        raise OnnxSurgeryError(
            f"{path}: not an ONNX model (no IR version or no graph); export it with torch.onnx.export"
        )
    data_files = _read_external_initializers(model, path, PROTOBUF_LIMIT - size)
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            first = next((line for line in str(error).splitlines() if line.strip()), "invalid graph")
            raise OnnxSurgeryError(
                f"{path}: fails the ONNX checker ({first.strip()}); fix or re-export the model"
            ) from None
    return LoadedOnnx(model, path, data_files)


def _is_external(tensor) -> bool:
    from onnx import TensorProto

    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _read_external_initializers(model, path: Path, budget: int) -> list[Path]:
    """Read every external initializer of the main graph into the model (confined, sized); refuse any other.
    Returns the data files read, in first-use order."""
    everywhere = external_tensor_names(model)
    initializers = [t for t in model.graph.initializer if _is_external(t)]
    if len(everywhere) > len(initializers):
        ours = {t.name for t in initializers}
        name = next((n for n in everywhere if n not in ours), everywhere[0])
        raise OnnxSurgeryError(
            f"{path}: {len(everywhere) - len(initializers)} tensor(s) outside the graph's initializers (e.g. {name!r} "
            "in a Constant, function or subgraph) point at external data files; refused: only initializers may"
        )
    folder = path.resolve().parent
    handles: dict[Path, tuple[int, int]] = {}  # resolved data file -> (fd, size)
    try:
        for tensor in initializers:
            data = _read_one(tensor, path, folder, handles, budget)
            budget -= len(data)
            tensor.raw_data = data
            del tensor.external_data[:]
            tensor.data_location = 0  # DEFAULT: the bytes are in the tensor now
    finally:
        for fd, _ in handles.values():
            os.close(fd)
    return list(handles)


def _tensor_bytes(tensor, path: Path) -> int:
    """Bytes the tensor's dims and type declare (checked factor by factor: no big-int product)."""
    from onnx import TensorProto, helper

    if tensor.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        raise OnnxSurgeryError(f"{path}: tensor {tensor.name!r} of type {tensor.data_type} cannot be external data")
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        raise OnnxSurgeryError(f"{path}: tensor {tensor.name!r} has unknown data type {tensor.data_type}") from None
    if any(dim < 0 for dim in tensor.dims):
        raise OnnxSurgeryError(f"{path}: tensor {tensor.name!r} has a negative dimension")
    total = bounded_product([itemsize, *tensor.dims], PROTOBUF_LIMIT)
    if total > PROTOBUF_LIMIT:
        raise OnnxSurgeryError(f"{path}: tensor {tensor.name!r} declares over 2 GiB of external data")
    return total


def _read_one(tensor, path: Path, folder: Path, handles: dict, budget: int) -> bytes:
    """The declared bytes of one external initializer, from a regular file inside ``folder``."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    unknown = set(entries) - {"location", "offset", "length", "checksum"}
    location = entries.get("location", "")
    where = f"{path}: tensor {tensor.name!r} external data {location!r}"
    if unknown or not location:
        raise OnnxSurgeryError(f"{where}: no location or unknown keys {sorted(unknown)}; refused")
    parts = location.replace("\\", "/").split("/")
    if os.path.isabs(location) or "\0" in location or any(p in ("", ".", "..") for p in parts):
        raise OnnxSurgeryError(
            f"{where}: external data must be named by a plain relative path inside the model's folder; refused"
        )
    if any(p.startswith(".") for p in parts):  # .ssh/id_rsa, .env, .bashrc next to a model in $HOME: never data
        raise OnnxSurgeryError(f"{where}: external data is a hidden file or folder; refused (rename the data file)")
    target = (folder / location).resolve()
    if target.parent != folder and folder not in target.parents:
        raise OnnxSurgeryError(f"{where}: external data leads out of the model's folder (symlink); refused")
    if target == path.resolve():
        raise OnnxSurgeryError(f"{where}: external data names the model file itself; refused")
    expected = _tensor_bytes(tensor, path)
    offset, length = entries.get("offset", "0"), entries.get("length", str(expected))
    if not _INT.fullmatch(offset) or not _INT.fullmatch(length) or int(length) != expected:
        raise OnnxSurgeryError(
            f"{where}: offset {offset[:20]!r} / length {length[:20]!r} are not the {expected} bytes the tensor "
            "declares; refused"
        )
    if expected > budget:
        raise OnnxSurgeryError(f"{where}: external data over protobuf's 2 GiB limit in all; refused")
    if target not in handles:
        try:  # O_NONBLOCK: a FIFO named as data must not block the open
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as error:
            raise OnnxSurgeryError(f"{where}: external data file cannot be read ({error.strerror})") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise OnnxSurgeryError(f"{where}: external data is not a regular file; refused")
        handles[target] = (fd, info.st_size)
    fd, file_size = handles[target]
    start = int(offset)
    if start + expected > file_size:
        raise OnnxSurgeryError(
            f"{where}: bytes {start}..{start + expected} are past the end of the {file_size}-byte external data file"
        )
    chunks, done = [], 0
    while done < expected:
        chunk = os.pread(fd, min(expected - done, 1 << 26), start + done)
        if not chunk:
            raise OnnxSurgeryError(f"{where}: external data file ended early")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def external_tensor_names(model) -> list[str]:
    """Names of every tensor anywhere in ``model`` whose data lives in another file (ONNX would read that file when
    evaluating and write it when saving). Every protobuf message is walked (initializers, Constants, sparse tensors,
    subgraphs, functions, training graphs) with an explicit stack, so no nesting escapes it."""
    from onnx import TensorProto

    found: list[str] = []
    stack = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, TensorProto):
            if _is_external(message):
                found.append(message.name or "<unnamed>")
            continue  # a tensor holds no further tensors; its raw bytes are never copied here
        for descriptor, value in message.ListFields():
            if descriptor.type != descriptor.TYPE_MESSAGE:
                continue
            if _repeated(descriptor):
                stack.extend(value)
            else:
                stack.append(value)
    return found


def _repeated(descriptor) -> bool:
    """Whether a protobuf field is repeated (``label`` is gone from newer protobuf; ``is_repeated`` replaces it)."""
    flag = getattr(descriptor, "is_repeated", None)
    return bool(flag) if flag is not None else descriptor.label == descriptor.LABEL_REPEATED


def data_file_for(destination: str | os.PathLike) -> Path:
    """The one external data file ``save_onnx`` writes next to ``destination``: ``<name>.data``."""
    destination = Path(destination)
    return destination.with_name(destination.name + ".data")


def save_onnx(model, destination: str | os.PathLike, external_data: bool = False, keep: tuple[Path, ...] = ()) -> Path:
    """Check ``model`` (every tensor in memory) and write it atomically: no partial file on failure.

    Serialised here, not by ``onnx.save_model``, which would write an external-data tensor to the path it names.

    Args:
        external_data (bool): Put initializers of ``EXTERNAL_THRESHOLD`` bytes or more into ``data_file_for(dst)``
            (the data file renamed into place first, then the graph that names it).
        keep (tuple[Path, ...]): Files that must not be replaced (the input and its data files).

    Returns:
        (Path): ``destination``.
    """
    import onnx

    from ..atomic_io import SPECIAL_KINDS, atomic_write_all

    if external_tensor_names(model):
        raise OnnxSurgeryError(f"{destination}: the graph references external data files; refusing to write it")
    destination = Path(destination)
    targets = [data_file_for(destination), destination] if external_data else [destination]
    protected = {Path(k).resolve() for k in keep}
    for target in targets:
        if target.resolve() in protected:
            raise OnnxSurgeryError(f"{target}: is one of the input's files; refusing to overwrite it, write elsewhere")
        if (target.exists() or target.is_symlink()) and not target.is_file():
            mode = target.stat().st_mode if target.exists() else None  # None: a link leading nowhere
            kind = "a link" if mode is None else SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")
            raise OnnxSurgeryError(f"{target}: exists and is {kind}; refusing to replace it (write to a file instead)")
    onnx.checker.check_model(model)
    if external_data:
        graph_bytes, blob = _externalise(model, targets[0].name)
        writes = [(targets[0], blob), (destination, graph_bytes)]
    else:
        writes = [(destination, model.SerializeToString())]
    return atomic_write_all([(target, _writer(data)) for target, data in writes])[-1]


def _writer(data: bytes):
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return write


def _externalise(model, location: str) -> tuple[bytes, bytes]:
    """(serialized graph, data file bytes): main-graph initializers of ``EXTERNAL_THRESHOLD`` raw bytes or more
    move to ``location`` (a name of ours, in the output's folder); the rest stay inline."""
    import onnx
    from onnx import TensorProto

    out = onnx.ModelProto()
    out.CopyFrom(model)
    chunks, offset = [], 0
    for tensor in out.graph.initializer:
        if not tensor.HasField("raw_data") or len(tensor.raw_data) < EXTERNAL_THRESHOLD:
            continue
        pad = -offset % _ALIGN
        chunks += [b"\0" * pad, tensor.raw_data]
        offset += pad
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(tensor.raw_data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += len(tensor.raw_data)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    return out.SerializeToString(), b"".join(chunks)
