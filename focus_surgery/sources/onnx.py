"""Deployed ONNX graphs (``.onnx``, the ``onnx`` extra): read, folded and checked by ``focus_surgery.onnx_graph``.
Every proven Focus / space-to-depth chain is folded into its Conv, whatever ``--scope`` says; ``--verify`` compares
both graphs in onnxruntime at the model's real size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConversionError
from ..report import ConvertReport
from .base import ANY_LAYOUT, ConvertOptions, Source
from .loading import Loaded


def _stem_lines(report) -> list[str]:
    lines = []
    for stem in report.stems:
        head = f"{stem.conv}: {stem.family} ({', '.join(f'{n} {op}' for op, n in sorted(stem.ops.items()))})"
        s2d = f"space-to-depth({stem.block_size}, {stem.order}) reading {stem.root!r} -> one strided Conv"
        lines.append(f"  stem {head} = {s2d}" if stem.convertible else f"  left {head}: {stem.reason}")
    none = "  no Slice / SpaceToDepth / Reshape-Transpose chain feeds a Conv (already converted, or none to fold)"
    return lines or [none]


class OnnxSource(Source):
    name = "onnx"
    description = "ONNX graph"
    specificity = 30  # read by its own reader: nothing else claims its content
    scopes = ("stem", "all")  # every proven chain is folded
    outputs = {ANY_LAYOUT: (".onnx",)}
    reads = (".onnx",)
    uses = ("tolerance",)  # of --verify
    own_proof = True  # the written graph runs in onnxruntime against the original (``prove_written``)

    def read(self, path: Path) -> Loaded:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as error:
            hint = "pip install 'focus-surgery[onnx]'"
            raise ConversionError(f"ONNX files need the onnx extra ({error}): {hint}") from None
        from ..onnx_graph import read_onnx

        graph = read_onnx(path)  # its external data, if any, read in (confined to the model's folder)
        return Loaded(path, graph.model, container="onnx", metadata={"data_files": graph.data_files})

    def claims(self, loaded: Loaded) -> bool:
        return loaded.path.suffix.lower() in self.reads

    def inspect(self, loaded: Loaded) -> dict[str, Any]:
        from ..onnx_graph import inspect_onnx

        report = inspect_onnx(loaded.path, loaded.content)
        head = f"{loaded.path}: ONNX opset {report.opset}, {report.nodes_before} nodes"
        return {**report.to_dict(), "source": self.name, "lines": [head, *_stem_lines(report)]}

    def convert(self, loaded: Loaded, options: ConvertOptions) -> ConvertReport:
        from ..onnx_graph import fold_model
        from ..onnx_graph.io import save_onnx

        graph, out = fold_model(loaded.path, loaded.content, verify=options.verify, tolerance=options.tolerance)
        fields = {k: v for k, v in graph.to_dict().items() if k not in ("src", "dst", "max_abs_err")}
        change = f"{len(graph.replaced)} stem(s) folded, {graph.nodes_before} -> {graph.nodes_after} nodes"
        check = graph.verification
        details = _stem_lines(graph) + ([f"  verify: {check}"] if check else [])
        report = ConvertReport(str(loaded.path), self.name, "conv", options.scope, f"{change}, opset {graph.opset}")
        report.fields, report.details = fields, details
        report.max_abs_err = check.max_abs_err if check else None
        report.problem = str(check) if check is not None and not check.passed else None
        report.after = graph.stems  # the folded stems, compared one by one when the written graph is proven
        data_files = loaded.metadata["data_files"]  # weights kept outside stay outside, in a file we name
        report.write = lambda dst: save_onnx(out, dst, external_data=bool(data_files), keep=(loaded.path, *data_files))
        return report

    def prove_written(self, loaded: Loaded, written: Loaded, report: ConvertReport, options: ConvertOptions) -> Any:
        """The written graph, read back by ``read_onnx``, run against the original in onnxruntime (and the folded
        stems in float64), as ``--verify`` ran the graph in memory."""
        from ..onnx_graph.runtime import compare

        return compare(loaded.content, written.content, options.tolerance, report.after or ())

    def state_dict(self, loaded: Loaded) -> dict:
        raise ConversionError(
            f"{loaded.path}: verify compares checkpoints; an ONNX graph is checked by convert --verify"
        )
