"""The ``.onnx`` side of ``focus-surgery convert`` and ``inspect`` (``cli.py`` dispatches here on the suffix)."""

from __future__ import annotations

import json
from typing import Any

from .io import OnnxSurgeryError


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise OnnxSurgeryError(f"ONNX files need the onnx extra ({error}): pip install 'focus-surgery[onnx]'") from None


def _emit(result: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    from ..cli import printable, report_stream  # node names come from the file: escaped before the terminal

    print(json.dumps(result, default=str) if as_json else printable("\n".join(lines)), file=report_stream())


def _stem_lines(report) -> list[str]:
    lines = []
    for stem in report.stems:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(stem.ops.items()))
        if stem.convertible:
            lines.append(
                f"  stem {stem.conv}: {stem.family} ({ops}) = space-to-depth({stem.block_size}, {stem.order}) "
                f"reading {stem.root!r} -> one strided Conv"
            )
        else:
            lines.append(f"  left {stem.conv}: {stem.family} ({ops}): {stem.reason}")
    return lines or ["  no Slice / SpaceToDepth / Reshape-Transpose chain feeds a Conv"]


def convert_command(args) -> int:
    """``focus-surgery convert model.onnx out.onnx [--verify] [--json]``: exit 0, 1 (verification) or 2."""
    _require_onnx()
    from ..cli import EXIT_OK, VerificationFailed
    from . import OnnxVerificationError, convert_onnx

    if args.to != "conv":
        raise OnnxSurgeryError(f"{args.src}: ONNX graphs convert --to conv only (got --to {args.to})")
    try:
        report = convert_onnx(args.src, args.dst, verify=args.verify, tolerance=getattr(args, "tolerance", None))
    except OnnxVerificationError as error:
        raise VerificationFailed(str(error)) from None
    lines = [
        f"converted {args.src} -> {args.dst}: {len(report.replaced)} stem(s) folded, "
        f"{report.nodes_before} -> {report.nodes_after} nodes (opset {report.opset})",
        *_stem_lines(report),
    ]
    if report.verification:
        lines.append(f"  verify: {report.verification}")
    _emit(report.to_dict(), args.json, lines)
    return EXIT_OK


def inspect_command(args) -> int:
    """``focus-surgery inspect model.onnx [--json]``: the stems found and why any is left."""
    _require_onnx()
    from ..cli import EXIT_OK
    from . import inspect_onnx

    report = inspect_onnx(args.src)
    lines = [f"{args.src}: ONNX opset {report.opset}, {report.nodes_before} nodes", *_stem_lines(report)]
    _emit(report.to_dict(), args.json, lines)
    return EXIT_OK
