"""Whole-model ONNX latency before and after ``focus-surgery convert model.onnx``, at every onnxruntime level.

``python bench/onnx_models.py [--models yolov5n yolov5s] [--size 640] [--rounds 15] [--threads 1]`` writes
``bench/results/onnx_models.json`` and prints a Markdown table (the README's ONNX paragraph quotes it).

The models are Ultralytics' own YOLOv5 definitions (``yolov5{n,s}.yaml``, random weights) with the stem row set to
``Focus(64, 3)`` as in YOLOv5 <= v5.0, exported whole by ``torch.onnx.export`` (opset 17, static 1x3xSIZExSIZE),
then folded by ``onnx_graph.fold``. Each graph runs in onnxruntime (CPU) under every graph optimization level
(disabled, basic, extended, all); all sessions are timed interleaved, round after round, so load on the machine
falls on every row alike; the table gives medians. Node counts are those of the file and, per level, of the graph
onnxruntime actually runs (its optimized model).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LEVELS = ("disabled", "basic", "extended", "all")


def export_yolov5(scale: str, size: int) -> bytes:
    """Ultralytics' YOLOv5 ``scale`` model with a Focus stem (YOLOv5 <= v5.0), exported whole as ONNX bytes."""
    import torch
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg = copy.deepcopy(yaml_model_load("yolov5.yaml"))
    cfg["scale"] = scale
    cfg["backbone"][0] = [-1, 1, "Focus", [64, 3]]
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        model = DetectionModel(cfg, ch=3, verbose=False).eval()
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = True  # Detect: one output tensor, as Ultralytics' exporter sets it
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(1, 3, size, size),), buffer, dynamo=False, opset_version=17, input_names=["images"]
        )
    return buffer.getvalue()


def _session(data: bytes, level: str, threads: int, optimized_path: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _node_count(path: str) -> int:
    import onnx

    return len(onnx.load(path, load_external_data=False).graph.node)


def bench_model(name: str, data: bytes, size: int, rounds: int, threads: int) -> list[dict]:
    """Rows (graph, level): node counts and median latency over ``rounds`` interleaved rounds."""
    import numpy as np
    import onnx

    from focus_surgery.onnx_graph import fold

    graphs = {"original": data, "folded": fold(onnx.load_from_string(data))[0].SerializeToString()}
    sessions, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for graph, blob in graphs.items():
            for level in LEVELS:
                optimized = str(Path(tmp) / f"{graph}-{level}.onnx")
                sessions[graph, level] = _session(blob, level, threads, optimized)
                rows.append(
                    {
                        "model": name,
                        "graph": graph,
                        "level": level,
                        "nodes_in_file": len(onnx.load_from_string(blob).graph.node),
                        "nodes_run": _node_count(optimized),
                    }
                )
    feed = {"images": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in sessions}
    for session in sessions.values():  # warm-up
        session.run(None, feed)
    for _ in range(rounds):
        for key, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            times[key].append(time.perf_counter() - start)
    best_original = min(statistics.median(times["original", level]) for level in LEVELS)
    for row in rows:
        ms = statistics.median(times[row["graph"], row["level"]]) * 1e3
        row["median_ms"] = ms
        row["original_all_over_this"] = statistics.median(times["original", "all"]) * 1e3 / ms
        row["best_original_over_this"] = best_original * 1e3 / ms
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | graph | onnxruntime level | nodes (file / run) | median ms | original at `all` / this |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['graph']} | {r['level']} | {r['nodes_in_file']} / {r['nodes_run']} | "
            f"{r['median_ms']:.1f} | {r['original_all_over_this']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["yolov5n", "yolov5s"])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    rows = []
    for name in args.models:
        rows += bench_model(name, export_yolov5(name[-1], args.size), args.size, args.rounds, args.threads)
    result = {
        "onnxruntime": ort.__version__,
        "size": args.size,
        "rounds": args.rounds,
        "threads": args.threads,
        "rows": rows,
    }
    print(table(rows))
    if not args.no_write:
        out = ROOT / "bench" / "results" / "onnx_models.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
