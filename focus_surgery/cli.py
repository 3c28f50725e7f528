"""Command line: ``focus-surgery convert | inspect | verify | bench | demo`` (also ``python -m focus_surgery``).

Exit codes: 0 success, 1 verification failed, 2 bad input (one-line error on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint_io import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .state_dict import convert_state_dict, find_stem
from .surgery import ConversionError, VerificationError, convert, iter_stems
from .verify import DEFAULT_TOLERANCE, VerificationReport, verify

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class VerificationFailed(Exception):
    """Raised by a sub-command whose verification did not pass (exit code 1)."""


def _emit(result: dict[str, Any], as_json: bool, text: str) -> None:
    print(json.dumps(result, default=str) if as_json else text)


def _stem_module(state_dict: dict[str, torch.Tensor], block_size: int, order: str) -> torch.nn.Module:
    """The stem conv of a state dict as a module (Focus: space-to-depth + same-padded conv; else strided conv)."""
    from .layers import SpaceToDepth

    stem = find_stem(state_dict, block_size=block_size)
    weight = state_dict[stem.weight_key]
    out_ch, in_ch, kh, kw = weight.shape
    if stem.form == "focus":
        conv = torch.nn.Conv2d(in_ch, out_ch, (kh, kw), 1, (kh // 2, kw // 2), bias=False)
        module = torch.nn.Sequential(SpaceToDepth(block_size, order), conv)
    else:
        k_h, k_w = kh // block_size, kw // block_size
        conv = torch.nn.Conv2d(in_ch, out_ch, (kh, kw), block_size, (block_size * (k_h // 2), block_size * (k_w // 2)), bias=False)
        module = conv
    conv.weight.data.copy_(weight.float())
    return module


def _verify_state_dict_stems(a: dict, b: dict, block_size: int, order: str) -> VerificationReport:
    """Run the stems of two state dicts on the same random input in float64."""
    shape = (2, 3, 8 * block_size, 12 * block_size)
    return verify(_stem_module(a, block_size, order), _stem_module(b, block_size, order), input_shape=shape)


def _check_state_dict_stems(before: dict, after: dict, args, report: dict[str, Any]) -> float | None:
    """``--verify`` for state dicts: record the float64 stem check in ``report``; raise if it failed (exit 1)."""
    if not args.verify:
        return None
    check = _verify_state_dict_stems(before, after, args.block_size, args.order)
    report["verification"] = check.to_dict()
    report["assumes"] = "a state dict has no geometry: both stems are run with same padding (k // 2)"
    if not check.passed:
        raise VerificationFailed(f"{args.src}: verification failed ({check}); {args.dst} not written")
    return check.max_abs_err


def _convert_model_checkpoint(ckpt: Checkpoint, args) -> tuple[dict, dict[str, Any]]:
    """Convert every model object of a full checkpoint (``model`` and ``ema``); report the first."""
    content = dict(ckpt.content)  # the loaded objects are ours alone: converting them in place is safe
    try:
        reports = [
            convert(content[key], to=args.to, verify=args.verify)
            for key in ("model", "ema")
            if isinstance(content.get(key), torch.nn.Module)
        ]
    except VerificationError as error:
        raise VerificationFailed(f"{ckpt.path}: {error}; nothing written") from None
    report = reports[0]
    if not report.replaced:
        reason = "; ".join(f"{s.path}: {s.reason}" for s in report.skipped) or "no stem to convert"
        raise ConversionError(f"{ckpt.path}: nothing converted to {args.to} ({reason})")
    return content, report.to_dict()


def cmd_convert(args) -> int:
    from .yolov5.cli import handle_convert  # YOLOv5-repository files, folders, Ultralytics models

    if args.to == "fastest" and Path(args.src).is_dir():
        raise ValueError(f"{args.src}: --to fastest times one checkpoint file, not a folder")
    handled = handle_convert(args) if args.to != "fastest" else None  # fastest: one path for every model file
    if handled is not None:
        return handled
    src, dst = Path(args.src), Path(args.dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: refusing to overwrite the input; write to another file")
    ckpt = load_checkpoint(src)
    if args.to == "fastest":
        content, report, max_abs_err = _convert_fastest(ckpt, args)
    elif ckpt.model is not None:
        content, report = _convert_model_checkpoint(ckpt, args)
        if dst.suffix == ".safetensors":
            content = dict(ckpt.model.state_dict())
        max_abs_err = report["max_abs_err"]
    else:
        content, stem = convert_state_dict(ckpt.state_dict, args.to, args.block_size, args.order)
        report = {"stem": stem.prefix, "from": stem.form, "to": args.to, "weight_key": stem.weight_key}
        max_abs_err = _check_state_dict_stems(ckpt.state_dict, content, args, report)
    metadata = {"converted_by": "focus-surgery", "to": args.to}
    save_checkpoint(content, dst, metadata if dst.suffix == ".safetensors" else None)
    result = {"src": str(src), "dst": str(dst), "kind": ckpt.kind, "to": args.to, **report, "max_abs_err": max_abs_err}
    target = f"fastest here: {report['chosen']}" if args.to == "fastest" else args.to
    text = f"converted {src} -> {dst} (stem to {target})" + (
        f", verified: max_abs_err={max_abs_err:.3e}" if max_abs_err is not None else ""
    )
    _emit(result, args.json, text)
    return EXIT_OK


def _convert_fastest(ckpt: Checkpoint, args) -> tuple[Any, dict[str, Any], float | None]:
    """``convert --to fastest``: time the exact stem forms at --batch x 3 x --input-size^2 here, keep the fastest."""
    from .speed.optimize import fastest_model_checkpoint, fastest_state_dict_form

    if ckpt.model is not None:
        try:
            content, report = fastest_model_checkpoint(dict(ckpt.content), args.batch, args.input_size, args.verify)
        except VerificationError as error:
            raise VerificationFailed(f"{ckpt.path}: {error}; nothing written") from None
        if Path(args.dst).suffix == ".safetensors":
            content = dict(ckpt.model.state_dict())
        return content, {"chosen": report.stems[0].chosen, **report.to_dict()}, report.max_abs_err
    sd = ckpt.state_dict
    form, medians = fastest_state_dict_form(sd, args.batch, args.input_size, args.block_size, args.order)
    stem = find_stem(sd, block_size=args.block_size)
    report = {"stem": stem.prefix, "from": stem.form, "chosen": form, "median_ms": medians}
    if form == stem.form:
        return sd, report, None  # already the faster layout: written unchanged
    content = convert_state_dict(sd, form, args.block_size, args.order)[0]
    return content, report, _check_state_dict_stems(sd, content, args, report)


def cmd_inspect(args) -> int:
    from .yolov5.cli import handle_inspect  # YOLOv5-repository files

    handled = handle_inspect(args)
    if handled is not None:
        return handled
    ckpt = load_checkpoint(args.src)
    result: dict[str, Any] = {"path": str(ckpt.path), "kind": ckpt.kind}
    model = ckpt.model
    if model is not None:
        params = list(model.parameters())
        result.update(
            model=type(model).__name__,
            parameters=sum(p.numel() for p in params),
            dtype=str(params[0].dtype).replace("torch.", "") if params else None,
            stems=list(iter_stems(model)),
        )
        yaml = getattr(model, "yaml", None)
        if isinstance(yaml, dict) and "nc" in yaml:
            result["nc"] = yaml["nc"]
        for key in ("nc", "names", "stride"):
            if hasattr(model, key):
                value = getattr(model, key)
                result[key] = value.tolist() if isinstance(value, torch.Tensor) else value
    else:
        stem = find_stem(ckpt.state_dict)
        result.update(tensors=len(ckpt.state_dict), stems=[vars(stem)] if stem else [])
        if stem:
            result["stems"][0]["converts_to"] = "focus" if stem.form == "conv" else "conv"
    lines = [f"{result['path']}: {result['kind']}" + (f" {result.get('model')}" if model is not None else "")]
    for key in ("parameters", "dtype", "nc", "names"):
        if key in result:
            lines.append(f"  {key}: {result[key]}")
    for stem in result["stems"]:
        if "skipped" in stem:
            lines.append(f"  stem {stem['path']}: cannot convert to {stem['direction']}: {stem['skipped']}")
        elif "old_form" in stem:
            lines.append(f"  stem {stem['path']}: {stem['old_form']} -> {stem['new_form']} (convert --to {stem['direction']})")
        else:
            lines.append(f"  stem {stem['prefix']}: {stem['form']} form, weight {stem['shape']} (convert --to {stem['converts_to']})")
    if not result["stems"]:
        lines.append("  no Focus / space-to-depth / strided-conv stem found")
    _emit(result, args.json, "\n".join(lines))
    return EXIT_OK


def cmd_verify(args) -> int:
    from .yolov5.cli import handle_verify  # YOLOv5-repository files and their .safetensors conversions

    handled = handle_verify(args)
    if handled is not None:
        return handled
    a, b = load_checkpoint(args.a), load_checkpoint(args.b)
    if a.model is not None and b.model is not None:
        report = verify(a.model.float(), b.model.float())
        result = {"a": args.a, "b": args.b, **report.to_dict()}
        passed, text = report.passed, str(report)
    else:
        sa, sb = a.state_dict, b.state_dict
        stem_a, stem_b = find_stem(sa), find_stem(sb)
        if stem_a and stem_b and stem_a.form != stem_b.form:
            sa = convert_state_dict(sa, stem_b.form)[0]
        if sa.keys() != sb.keys():
            missing = sorted(set(sa) ^ set(sb))[:3]
            raise CheckpointError(f"{args.b}: keys differ from {args.a} (e.g. {missing}); not the same model")
        errors = [float((sa[k].double() - sb[k].double()).abs().max()) if sa[k].numel() else 0.0 for k in sa]
        max_abs = max(errors, default=0.0)
        passed = max_abs <= DEFAULT_TOLERANCE
        result = {"a": args.a, "b": args.b, "max_abs_err": max_abs, "passed": passed, "tensors": len(errors)}
        text = f"{'PASS' if passed else 'FAIL'}: max_abs_err={max_abs:.3e} over {len(errors)} tensors"
    _emit(result, args.json, text)
    return EXIT_OK if passed else EXIT_VERIFY_FAILED


def cmd_demo(args) -> int:
    from .demo import run_demo

    to_conv, back = run_demo()
    passed = to_conv.verification.passed and back.verification.passed
    return EXIT_OK if passed else EXIT_VERIFY_FAILED


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert the stem of a checkpoint (Focus <-> one strided conv)")
    p.add_argument("src", help="input checkpoint (.pt, .pth, .safetensors), or a folder of them")
    p.add_argument("dst", help="output file (.pt / .pth, or .safetensors for tensors only), or an output folder")
    p.add_argument("--to", choices=("conv", "focus", "s2d", "fastest"), default="conv",
                   help="target form (default conv); fastest: time every exact form here and keep the fastest")
    p.add_argument("--input-size", type=int, default=640, help="image size that --to fastest times (default 640)")
    p.add_argument("--batch", type=int, default=1, help="batch size that --to fastest times (default 1)")
    p.add_argument("--verify", action="store_true", help="measure the float64 error of the conversion")
    p.add_argument("--block-size", type=int, default=2, help="block size of a state dict's Focus stem (default 2)")
    p.add_argument("--order", default="yolov5", help="channel order of a state dict's Focus stem (default yolov5)")
    p.add_argument("--workers", type=int, default=1, help="parallel conversions for a folder input (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_convert)


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="show which stems a checkpoint holds and what they convert to")
    p.add_argument("src")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_inspect)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="compare two checkpoints (outputs in float64, or tensors of state dicts)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_verify)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="build a Focus model, convert it, verify it and print the report")
    p.set_defaults(handler=cmd_demo)


def cmd_bench(args) -> int:
    from .speed.bench import cases_from_flags, format_report, plot_latency, run_benchmark

    device = torch.device(args.device) if args.device else None
    result = run_benchmark(
        device, cases_from_flags(args.stems, args.sizes, args.batches, args.modes), args.quick, args.repeats,
        conversion=not args.no_conversion, onnx=not args.no_onnx, memory=not args.no_memory,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.plot:
        result["plot"] = str(plot_latency(result, args.plot))
    _emit(result, args.json, format_report(result))
    return EXIT_OK


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time every exact stem form, checkpoint conversion and ONNX export")
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
    p.set_defaults(handler=cmd_bench)


def _add_yolo(sub) -> None:  # Ultralytics' own CLI with our YAML rows registered (focus_surgery/yolo_cli.py)
    p = sub.add_parser("yolo", help="Ultralytics' yolo command with focus-surgery's layers: focus-surgery yolo train "
                       "model=configs/yolov8n-spd.yaml data=...", add_help=False)  # fmt: skip
    p.add_argument("yolo_args", nargs=argparse.REMAINDER, help="passed unchanged to Ultralytics")
    p.set_defaults(handler=lambda args: __import__("focus_surgery.yolo_cli", fromlist=["run_yolo"]).run_yolo(args.yolo_args))


COMMANDS: list[Callable] = [_add_convert, _add_inspect, _add_verify, _add_demo, _add_bench, _add_yolo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="focus-surgery", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except VerificationFailed as error:
        print(f"focus-surgery: {error}", file=sys.stderr)
        return EXIT_VERIFY_FAILED
    except (CheckpointError, ConversionError, ValueError, OSError) as error:
        print(f"focus-surgery: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # noqa: BLE001 - e.g. a model whose forward fails: still one line, exit 2
        print(f"focus-surgery: error: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"focus-surgery: {getattr(args, 'dst', '')}: interrupted; nothing was written", file=sys.stderr)
        return EXIT_BAD_INPUT
