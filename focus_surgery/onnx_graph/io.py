"""Loading and saving ONNX files: one-line errors for files that are not ONNX, fail the checker, keep tensors in
external data files or exceed protobuf's 2 GiB limit; writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint_io import atomic_write, check_readable
from ..errors import ConversionError

PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot exceed 2 GiB; larger models must use external data


class OnnxSurgeryError(ConversionError):
    """Bad input or a graph this tool cannot rewrite (the CLI exits 2 with this one-line message)."""


def load_onnx(path: str | os.PathLike, check: bool = True):
    """Read ``path`` as an ONNX model (every tensor inside the file) and run the ONNX checker on it.

    Raises:
        OnnxSurgeryError: The file is missing, not ONNX, over 2 GiB, uses external data, or fails the checker.
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
    external = external_tensor_names(model)
    if external:
        raise OnnxSurgeryError(
            f"{path}: {len(external)} tensor(s) (e.g. {external[0]!r}) point at external data files, not supported: "
            "re-save as one file with onnx.save(onnx.load(path), out, save_as_external_data=False) if under 2 GiB"
        )
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            first = next((line for line in str(error).splitlines() if line.strip()), "invalid graph")
            raise OnnxSurgeryError(
                f"{path}: fails the ONNX checker ({first.strip()}); fix or re-export the model"
            ) from None
    return model


def external_tensor_names(model) -> list[str]:
    """Names of every tensor anywhere in ``model`` whose data lives in another file.

    Walks every message of the protobuf (graph initializers, Constant attributes, sparse tensors, subgraphs of
    If / Loop / Scan, model-local functions, training graphs) with an explicit stack, so no nesting escapes it: such
    a tensor would make ONNX read a file it names when evaluated and write one when saved.
    """
    from google.protobuf.message import Message
    from onnx import TensorProto

    found: list[str] = []
    stack = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, TensorProto):
            if message.data_location == TensorProto.EXTERNAL or len(message.external_data):
                found.append(message.name or "<unnamed>")
            continue  # a tensor holds no further tensors; its raw bytes are never copied here
        for descriptor, value in message.ListFields():
            if descriptor.type != descriptor.TYPE_MESSAGE:
                continue
            if isinstance(value, Message):
                stack.append(value)
            else:  # a repeated field of messages (ONNX has no map fields)
                stack.extend(value)
    return found


def save_onnx(model, destination: str | os.PathLike) -> Path:
    """Check ``model`` and write it atomically (temporary file + rename): no partial file on failure.

    The bytes are serialised here and written to our own temporary file: ``onnx.save_model`` would also write
    any external-data tensor to the file its ``location`` names, a path the input chose.
    """
    import onnx

    if external_tensor_names(model):
        raise OnnxSurgeryError(f"{destination}: the graph references external data files; refusing to write it")
    onnx.checker.check_model(model)
    data = model.SerializeToString()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(destination, write)
