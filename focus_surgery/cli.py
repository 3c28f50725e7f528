"""Command line: ``focus-surgery convert | inspect | verify | bench | demo`` (also ``python -m focus_surgery``).

Exit codes: 0 success, 1 verification failed, 2 bad input (one-line error on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path

import torch

from ._version import __version__
from .files import LAYOUTS, SCOPES, TARGETS, convert_one, inspect_file, verify_files
from .limits import FORWARD_LIMIT, forward_memory_limit
from .report import _REPORT_STREAM, EXIT_OK, EXIT_VERIFY_FAILED, emit, error_exit


def cmd_convert(args) -> int:
    if Path(args.src).is_dir():
        if args.to == "fastest":
            raise ValueError(f"{args.src}: --to fastest times one checkpoint file, not a folder")
        from .folder import convert_folder  # one isolated child process per file

        return convert_folder(args)
    emit(convert_one(args.src, args.dst, args), args.json)
    return EXIT_OK


def cmd_inspect(args) -> int:
    emit(inspect_file(args.src, args.block_size, args.order), args.json)
    return EXIT_OK


def cmd_verify(args) -> int:
    result = verify_files(args.a, args.b, args.block_size, args.order)
    emit(result, args.json)
    return EXIT_OK if result["passed"] else EXIT_VERIFY_FAILED


def cmd_demo(args) -> int:
    from .demo import run_demo

    to_conv, back = run_demo()
    return EXIT_OK if to_conv.verification.passed and back.verification.passed else EXIT_VERIFY_FAILED


def cmd_bench(args) -> int:
    from .speed.bench import cases_from_flags, format_report, plot_latency, run_benchmark

    try:
        workers = tuple(int(n) for n in args.workers.split(",")) if args.workers else None
    except ValueError:
        raise ValueError("--workers takes comma-separated integers, e.g. --workers 1,2") from None
    if workers and min(workers) < 1:
        raise ValueError("--workers takes counts of 1 or more, e.g. --workers 1,2")
    device = torch.device(args.device) if args.device else None
    cases = cases_from_flags(args.stems, args.sizes, args.batches, args.modes)
    parts = {part: not getattr(args, f"no_{part}") for part in ("conversion", "onnx", "memory", "folder")}
    progress = functools.partial(print, file=sys.stderr, flush=True)
    result = run_benchmark(device, cases, args.quick, args.repeats, progress=progress, workers=workers, **parts)
    if args.plot:
        result["plot"] = str(plot_latency(result, args.plot))
    emit({**result, "summary": format_report(result)} if not args.json else result, args.json, max_nodes=sys.maxsize)
    return EXIT_OK


def _run_yolo(args) -> int:  # Ultralytics' own CLI with our YAML rows registered (focus_surgery/yolo.py)
    from .yolo import run_yolo

    return run_yolo(args.yolo_args)


def _command(sub, name: str, help: str, handler, *positional: str, **options) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, **options)
    for arg in positional:
        p.add_argument(arg)
    p.set_defaults(handler=handler)
    return p


def _geometry_and_json(p: argparse.ArgumentParser) -> None:
    """``--block-size`` / ``--order`` of ``inspect`` and ``verify`` (as ``convert`` takes them), and ``--json``."""
    p.add_argument("--block-size", type=int, help="block size of a state dict's stem (default 2), as for convert")
    p.add_argument("--order", help="channel order of a state dict's stem (default yolov5), as for convert")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focus-surgery", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "convert", "convert the stem of a checkpoint (Focus <-> one strided conv)", cmd_convert)
    p.add_argument("src", help="input checkpoint (.pt, .pth, .safetensors), or a folder of them")
    p.add_argument("dst", help="output file (.pt / .pth, or .safetensors for tensors only), or an output folder")
    what = "target form (default conv); fastest: time every exact form here and keep the fastest"
    p.add_argument("--to", choices=TARGETS, default="conv", help=what)
    what = "stem: the first conv only (default); all: every Focus / space-to-depth / strided conv"
    p.add_argument("--scope", choices=SCOPES, default="stem", help=what)
    what = (
        "YOLOv5-repository files: write an Ultralytics model, or the repository's own layout (default: "
        "Ultralytics where it can hold the model, else the repository's own layout, saying why)"
    )
    p.add_argument("--layout", choices=LAYOUTS, default=None, help=what)
    p.add_argument("--input-size", type=int, default=640, help="image size that --to fastest times (default 640)")
    p.add_argument("--batch", type=int, default=1, help="batch size that --to fastest times (default 1)")
    p.add_argument("--verify", action="store_true", help="measure the float64 error of the conversion")
    p.add_argument("--tolerance", type=float, help="ONNX --verify: max relative error (default: from the model's own)")
    p.add_argument("--block-size", type=int, help="block size of a state dict's stem (default: from the file, else 2)")
    p.add_argument("--order", help="channel order of a state dict's stem (default: from the file, else yolov5)")
    what = "parallel conversions for a folder input (default: the cores this process may use)"
    p.add_argument("--workers", type=int, help=what)
    what = "folder input: seconds one file may take before it is stopped and reported (default 300)"
    p.add_argument("--timeout", type=float, default=300.0, help=what)
    p.add_argument(
        "--max-memory",
        type=float,
        default=8.0,
        help="folder input: memory one file's conversion may use, GiB (default 8)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")

    what = "show which stems a checkpoint holds and what they convert to"
    _geometry_and_json(_command(sub, "inspect", what, cmd_inspect, "src"))
    what = "compare two checkpoints (outputs in float64, or tensors of state dicts)"
    _geometry_and_json(_command(sub, "verify", what, cmd_verify, "a", "b"))
    _command(sub, "demo", "build a Focus model, convert it, verify it and print the report", cmd_demo)

    p = _command(sub, "bench", "time every exact stem form, checkpoint conversion and ONNX export", cmd_bench)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PNG", help="also plot latency vs batch per form to this file")
    p.add_argument("--quick", action="store_true", help="tiny shapes and a tiny checkpoint (seconds)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--stems", help="comma list of yolov5n,yolov5s,yolov5m,yolov5l,yolov5x,tresnet_m")
    p.add_argument("--sizes", help="comma list of image sizes (default 640 for YOLOv5, 224 for TResNet)")
    p.add_argument("--batches", help="comma list of batch sizes (default 1)")
    p.add_argument("--modes", help="comma list of forward,forward+backward (default both)")
    p.add_argument("--repeats", type=int, help="interleaved rounds per shape (default 10 on GPU, 7 on CPU, quick 2)")
    p.add_argument("--no-conversion", action="store_true", help="skip the checkpoint conversion benchmark")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export benchmark")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--no-folder", action="store_true", help="skip the folder (--workers) benchmark")
    p.add_argument("--workers", help="comma list of --workers the folder benchmark compares (default 1 and the cores)")

    what = "Ultralytics' yolo command with focus-surgery's layers: focus-surgery yolo train "
    p = _command(sub, "yolo", what + "model=configs/yolov8n-spd.yaml data=...", _run_yolo, add_help=False)
    p.add_argument("yolo_args", nargs=argparse.REMAINDER, help="passed unchanged to Ultralytics")
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    from .atomic_io import Interrupted, cleanup_on_signals, describe_written, track_writes

    args = build_parser().parse_args(argv)
    _REPORT_STREAM.append(sys.stdout)
    # --json promises one JSON object on stdout: what libraries print (Ultralytics' first-run notice) goes to stderr
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    written: list = []  # what an interrupted run did put in place (folder runs: attached to the exception)
    try:
        with track_writes() as written, warnings.catch_warnings(), cleanup_on_signals():
            with forward_memory_limit(FORWARD_LIMIT), quiet_stdout:
                warnings.simplefilter("ignore")  # library warnings would turn a one-line error into several
                return args.handler(args)
    except (Exception, KeyboardInterrupt, Interrupted) as error:  # noqa: BLE001 - every failure: one line, exit 1 or 2
        done = describe_written(getattr(error, "written", None) or written)  # a folder run attaches its children's
        yolo = " ".join(["yolo", *args.yolo_args]) if getattr(args, "yolo_args", None) is not None else ""
        source = getattr(args, "src", None) or getattr(args, "a", None) or yolo  # yolo has no SRC: name what ran
        return error_exit(error, source, getattr(args, "dst", ""), done)
    finally:
        _REPORT_STREAM.pop()
