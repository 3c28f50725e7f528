"""Surgery on deployed ONNX files: fold a Focus / space-to-depth stem into one strided Conv, exactly.

``io`` (load, check, atomic save), ``patterns`` (find and identify chains), ``probe`` (prove them on index inputs),
``rewrite`` (fold them into the Conv), ``runtime`` (onnxruntime comparison); ``sources/onnx.py`` is the
command line's adapter. Needs the ``onnx`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VerificationFailed
from .io import OnnxSurgeryError, read_onnx, save_onnx
from .patterns import GraphIndex, OnnxStem, find_stems, inferred_values
from .runtime import OnnxVerification, OriginalGraphFailed

MAX_STEMS = 64  # stems proven per graph (each proof is bounded on its own; a model has one or a few)


OnnxVerificationError = VerificationFailed  # the old name: outputs differ beyond tolerance; ``.report`` says how


@dataclass
class OnnxReport:
    """What ``convert_onnx`` / ``inspect_onnx`` found and did."""

    src: str
    dst: str | None
    opset: int
    stems: list[OnnxStem]
    nodes_before: int
    nodes_after: int | None = None
    verification: OnnxVerification | None = None
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)

    @property
    def replaced(self) -> list[OnnxStem]:
        return [s for s in self.stems if s.convertible]

    @property
    def skipped(self) -> list[OnnxStem]:
        return [s for s in self.stems if not s.convertible]

    def to_dict(self) -> dict[str, Any]:
        keys = ("src", "dst", "opset", "nodes_before", "nodes_after", "ops_before", "ops_after")
        check = self.verification
        return {
            **{k: getattr(self, k) for k in keys},
            "replaced": [s.to_dict() for s in self.replaced],
            "skipped": [s.to_dict() for s in self.skipped],
            "verification": check.to_dict() if check else None,
            "max_abs_err": check.max_abs_err if check else None,
        }


def _op_counts(model) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def analyse(model) -> list[OnnxStem]:
    """``find_stems`` plus the index-tensor proof of every identified chain (a chain that fails it is skipped).

    Shapes from ONNX shape inference (int, or the symbolic name / None) only refine the search; without them dynamic
    dims are probed.
    """
    from .probe import probe_stem

    shapes = {}
    for value in inferred_values(model):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    index = GraphIndex(model.graph)  # built once: every stem's search and proof reads the same maps
    stems = find_stems(model, shapes, index)
    proven = 0
    for stem in stems:
        if stem.convertible and proven >= MAX_STEMS:
            stem.reason = f"more than {MAX_STEMS} stems in one graph: left unproven and unchanged"
        elif stem.convertible:
            proven += 1
            stem.reason = probe_stem(model, stem, shapes.get(stem.root), index)
    return stems


def fold(model) -> tuple[Any, list[OnnxStem]]:
    """In memory: ``model`` with every proven stem folded into its Conv (a copy), and the stems found."""
    from .rewrite import rewrite

    stems = analyse(model)
    return rewrite(model, stems), stems


def inspect_onnx(src: str | os.PathLike, model: Any = None) -> OnnxReport:
    """The stems of an ONNX file (``model``: already read from it): which convert, which are left and why."""
    model = read_onnx(src).model if model is None else model
    return _report(src, model, analyse(model))


def _report(src: str | os.PathLike, model: Any, stems: list[OnnxStem]) -> OnnxReport:
    """What was found in ``model`` (its default-domain opset, node and op counts), before any change."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxReport(str(src), None, opset, stems, len(model.graph.node), ops_before=_op_counts(model))


def convert_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike | None = None,
    verify: bool = True,
    tolerance: float | None = None,
    external_data: bool | None = None,
) -> OnnxReport:
    """Fold every Focus / space-to-depth stem of an ONNX file into its Conv; write ``dst`` atomically.

    Args:
        src (str | PathLike): The ONNX file (never modified; external data read from its own folder).
        dst (str | PathLike | None): Output file, written only when verification passes; None writes nothing.
        verify (bool): Compare both graphs and each folded stem (``runtime.compare``).
        tolerance (float | None): Max relative error of the whole graph; None derives it from the original's own.
        external_data (bool | None): Write large initializers to ``<dst>.data`` (the pair atomically); None does
            so when the input kept its weights in external data.

    Returns:
        (OnnxReport): Stems replaced and skipped (with reasons), node counts, the measured errors.

    Raises:
        OnnxSurgeryError: Bad input or no stem to convert (``OriginalGraphFailed``: the original cannot run).
        OnnxVerificationError: The outputs differ beyond ``tolerance``; nothing written.
    """
    if dst is not None and Path(src).resolve() == Path(dst).resolve():
        raise OnnxSurgeryError(f"{dst}: refusing to overwrite the input; write to another file")
    loaded = read_onnx(src)
    report, out = fold_model(src, loaded.model, verify, tolerance)
    report.dst = str(dst) if dst is not None else None
    if report.verification is not None and not report.verification.passed:
        raise OnnxVerificationError(f"{src}: verification failed ({report.verification}); nothing written", report)
    if dst is not None:
        external = bool(loaded.data_files) if external_data is None else external_data
        save_onnx(out, dst, external_data=external, keep=(loaded.path, *loaded.data_files))
    return report


def fold_model(
    src: str | os.PathLike, model: Any, verify: bool = True, tolerance: float | None = None
) -> tuple[OnnxReport, Any]:
    """``convert_onnx`` in memory: the report (``verification`` measured when ``verify``, failed or not) and the
    folded model; nothing is written. Raises as ``convert_onnx`` does, except for a failed verification."""
    from .runtime import compare

    if tolerance is not None and not (0 < tolerance < float("inf")):
        raise OnnxSurgeryError(f"--tolerance {tolerance}: give a positive finite relative error, e.g. 1e-4")
    out, stems = fold(model)
    report = _report(src, model, stems)
    if not report.replaced:
        why = (
            "; ".join(f"{s.conv}: {s.reason}" for s in stems)
            or "no Slice / SpaceToDepth / Reshape-Transpose chain feeds a Conv"
        )
        raise OnnxSurgeryError(f"{src}: no space-to-depth stem to fold ({why})")
    report.nodes_after, report.ops_after = len(out.graph.node), _op_counts(out)
    if verify:
        report.verification = compare(model, out, tolerance, stems)
    return report, out


__all__ = [
    "OnnxReport",
    "OnnxStem",
    "OnnxSurgeryError",
    "OnnxVerification",
    "OnnxVerificationError",
    "OriginalGraphFailed",
    "convert_onnx",
    "find_stems",
    "fold",
    "fold_model",
    "inspect_onnx",
]
