"""Loading and saving ONNX files: one-line errors for files that are not ONNX, fail the checker, keep tensors in
external data files or exceed protobuf's 2 GiB limit; writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint_io import atomic_write, check_readable

PROTOBUF_LIMIT = 2**31 - 1  # a serialized ModelProto cannot exceed 2 GiB; larger models must use external data


class OnnxSurgeryError(ValueError):
    """Bad input or a graph this tool cannot rewrite (the CLI exits 2 with this one-line message)."""


def load_onnx(path: str | os.PathLike, check: bool = True):
    """Read ``path`` as an ONNX model (every tensor inside the file) and run the ONNX checker on it.

    Raises:
        OnnxSurgeryError: The file is missing, not ONNX, over 2 GiB, uses external data, or fails the checker.
    """
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import uses_external_data

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
        raise OnnxSurgeryError(f"{path}: not an ONNX model ({str(error).splitlines()[0] if str(error) else 'parse error'})") from None
    if model.ir_version == 0 or not model.HasField("graph") or not model.graph.node:
        raise OnnxSurgeryError(f"{path}: not an ONNX model (no IR version or no graph); export it with torch.onnx.export")
    external = [t.name for t in model.graph.initializer if uses_external_data(t)]
    if external:
        raise OnnxSurgeryError(
            f"{path}: {len(external)} tensor(s) (e.g. {external[0]!r}) live in external data files, not supported: "
            "re-save as one file with onnx.save(onnx.load(path), out, save_as_external_data=False) if under 2 GiB"
        )
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            first = next((line for line in str(error).splitlines() if line.strip()), "invalid graph")
            raise OnnxSurgeryError(f"{path}: fails the ONNX checker ({first.strip()}); fix or re-export the model") from None
    return model


def save_onnx(model, destination: str | os.PathLike) -> Path:
    """Check ``model`` and write it atomically (temporary file + rename): no partial file on failure."""
    import onnx

    onnx.checker.check_model(model)
    return atomic_write(destination, lambda tmp: onnx.save_model(model, tmp))
