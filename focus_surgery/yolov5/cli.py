"""Command-line handling of YOLOv5-repository checkpoints and of folders of checkpoints.

``cli.cmd_convert`` / ``cli.cmd_inspect`` call ``handle_convert`` / ``handle_inspect`` first; these return an exit
code when they took the job (a YOLOv5-repository file, a folder, an Ultralytics model) and None otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..checkpoint_io import CheckpointError
from ..loader import read_checkpoint
from ..surgery import ConversionError

YOLOV5_MODULES = ("models.yolo.", "models.common.", "models.experimental.")
CHECKPOINT_SUFFIXES = (".pt", ".pth")


def checkpoint_family(path: str | os.PathLike) -> str:
    """``"yolov5"``, ``"ultralytics"`` or ``"other"``, from the globals the safe load met (inside
    ``loader.reading_once``, the conversion that follows reuses this read).

    Raises:
        CheckpointError: Missing, empty, unreadable file.
    """
    if Path(path).suffix == ".safetensors":
        return "other"
    names = read_checkpoint(path).globals
    if any(n.startswith(YOLOV5_MODULES) for n in names):
        return "yolov5"
    if any(n.startswith("ultralytics.nn.tasks.") for n in names):
        return "ultralytics"
    return "other"


def convert_legacy_file(src: str, dst: str, to: str, measure: bool) -> dict[str, Any]:
    """Convert one YOLOv5-repository checkpoint and write it; the result as a dict (``max_abs_err`` included).

    Raises:
        CheckpointError / ConversionError / ValueError: bad input (exit 2).
        VerificationFailed: the float64 check failed (exit 1); nothing written.
    """
    from ..cli import VerificationFailed
    from .convert import convert_yolov5, save_conversion

    if Path(dst).suffix not in (".pt", ".pth", ".safetensors"):
        raise CheckpointError(f"{dst}: unknown output type {Path(dst).suffix!r}; use .pt, .pth or .safetensors")
    conv = convert_yolov5(src, to=to, measure=measure)
    if conv.verification is not None and not conv.verification.passed:
        raise VerificationFailed(f"{src}: verification failed ({conv.verification}); {dst} not written")
    written = save_conversion(conv, dst, to)
    result = {
        "src": str(src), "dst": str(dst), "kind": "yolov5", "release": None, "to": to,
        "stem_before": conv.stem_before, "stem_after": conv.stem_after, "replaced": conv.replaced,
        "dtype": str(conv.ckpt.dtype).replace("torch.", ""), "written": [str(p) for p in written],
        "max_abs_err": conv.max_abs_err,
        "max_rel_err": conv.verification.max_rel_err if conv.verification else None,
    }  # fmt: skip
    from .rebuild import guess_release

    result["release"] = guess_release(conv.ckpt)
    return result


def _convert_generic(src: str, dst: str, args: argparse.Namespace) -> dict[str, Any]:
    """A non-YOLOv5 file through the core ``convert`` command, its printed JSON captured."""
    from ..cli import cmd_convert

    ns = argparse.Namespace(**{**vars(args), "src": src, "dst": dst, "json": True, "core_only": True})
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cmd_convert(ns)
    return json.loads(buffer.getvalue().strip().splitlines()[-1])


def convert_one(src: str, dst: str, args: argparse.Namespace) -> dict[str, Any]:
    """Convert any single checkpoint (dispatching on its family); raises on failure."""
    if Path(src).resolve() == Path(dst).resolve():
        raise CheckpointError(f"{dst}: refusing to overwrite the input; write to another file")
    family = checkpoint_family(src)
    if family == "yolov5":
        return convert_legacy_file(src, dst, args.to, args.verify)
    if family == "ultralytics":
        try:
            result = _convert_generic(src, dst, args)
        except ConversionError as error:
            raise ConversionError(
                f"{src}: already a current Ultralytics model, and its stem does not convert to {args.to} ({error})"
            ) from None
        result["note"] = "already a current Ultralytics model; its stem was converted"
        return result
    return _convert_generic(src, dst, args)


def _convert_in_child(src: str, dst: str, options: dict) -> dict[str, Any]:
    """One file of a folder run, inside its isolated child process (see ``folder.convert_isolated``)."""
    import warnings

    from ..loader import reading_once

    args = argparse.Namespace(**options)
    if args.workers > 1:  # parallelism comes from the processes; threads inside them would only contend
        import torch

        torch.set_num_threads(1)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    from ..cli import FORWARD_LIMIT
    from ..limits import forward_memory_limit

    with warnings.catch_warnings(), reading_once(), forward_memory_limit(FORWARD_LIMIT):
        warnings.simplefilter("ignore")
        return convert_one(src, dst, args)


def convert_folder(args: argparse.Namespace) -> int:
    """``convert DIR OUTDIR``: every ``.pt``/``.pth`` under DIR to the same relative path under OUTDIR, each file in
    its own child process (a crashing, hanging or memory-hungry file fails alone)."""
    from ..cli import printable
    from ..folder import checkpoint_files, convert_isolated, progress_bar, worker_options

    src_dir, out_dir = Path(args.src), Path(args.dst)
    if (out_dir.exists() and not out_dir.is_dir()) or (
        not out_dir.exists() and out_dir.suffix in (*CHECKPOINT_SUFFIXES, ".safetensors")
    ):
        raise CheckpointError(
            f"{src_dir}: is a directory, not a checkpoint file (to convert every checkpoint in it, give an output folder)"
        )
    if out_dir.resolve() == src_dir.resolve():
        raise CheckpointError(f"{out_dir}: output folder must differ from the input folder")
    files = checkpoint_files(src_dir, out_dir, CHECKPOINT_SUFFIXES)
    if not files:
        raise CheckpointError(f"{src_dir}: no .pt / .pth files in this folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), str(out_dir / p.relative_to(src_dir))) for p in files]
    workers = max(1, int(getattr(args, "workers", 1) or 1))
    outcomes = convert_isolated(
        jobs, _convert_in_child, worker_options(vars(args)), workers, float(args.timeout),
        int(float(args.max_memory) * 2**30), progress_bar,
    )  # fmt: skip
    converted = [o.result for o in outcomes if o.result is not None]
    failed = [{"file": o.src, "reason": o.error} for o in outcomes if o.result is None]
    summary = {"src": str(src_dir), "dst": str(out_dir), "converted": converted, "failed": failed}
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(printable(f"converted {len(converted)}, failed {len(failed)} (of {len(outcomes)} files under {src_dir})"))
        for item in converted:
            err = item.get("max_abs_err")
            print(printable(f"  ok    {item['src']} -> {item['dst']}" + (f" (max_abs_err={err:.3e})" if err is not None else "")))
        for item in failed:
            print(printable(f"  FAIL  {item['file']}: {item['reason']}"))
    return 2 if failed else 0


def handle_convert(args: argparse.Namespace) -> int | None:
    """Take ``convert`` for folders, YOLOv5-repository files and Ultralytics models; None leaves it to the core."""
    from ..cli import EXIT_OK, _emit

    if getattr(args, "core_only", False):
        return None
    if Path(args.src).is_dir():
        return convert_folder(args)
    family = checkpoint_family(args.src)  # also reports missing / empty / unreadable files
    if family == "other":
        return None
    result = convert_one(args.src, args.dst, args)
    err = result.get("max_abs_err")
    text = (f"converted {args.src} -> {args.dst} ({result.get('stem_before', 'stem')} -> {result.get('stem_after', args.to)})"
            + (f", verified: max_abs_err={err:.3e}" if err is not None else ""))  # fmt: skip
    if family == "ultralytics" and not args.json:
        text = f"{args.src} is already a current Ultralytics model; " + text
    _emit(result, args.json, text)
    return EXIT_OK


def handle_inspect(args: argparse.Namespace) -> int | None:
    """``inspect`` of a YOLOv5-repository file; None for anything else."""
    from ..cli import EXIT_OK, _emit

    if Path(args.src).is_dir():
        raise CheckpointError(f"{args.src}: is a directory; inspect one checkpoint file")
    if checkpoint_family(args.src) != "yolov5":
        return None
    from .rebuild import describe, read_yolov5_checkpoint

    info = describe(read_yolov5_checkpoint(args.src))
    lines = [f"{info['path']}: YOLOv5-repository checkpoint, most likely release {info['release']}"]
    types = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in info["layer_types"].items())
    lines.append(f"  architecture: {info['layers']} layers ({types}); depth {info['depth_multiple']}, "
                 f"width {info['width_multiple']}; {info['parameters']:,} parameters")  # fmt: skip
    lines.append(f"  stem: {info['stem']}, activation {info['stem_activation']}")
    lines.append(f"  nc: {info['nc']}  names: {info['names']}")
    lines.append(f"  anchors (px): {info['anchors']}  strides: {info['stride']}")
    lines.append(f"  dtype: {info['dtype']}  epoch: {info['epoch']}  best fitness: {info['best_fitness']}")
    lines.append(f"  converts: {info['converts']}")
    _emit(info, args.json, "\n".join(lines))
    return EXIT_OK


def _model_for_verify(path: str):
    """A float32 eval model for ``verify``: rebuilt YOLOv5 file, our safetensors + JSON, or None (core's job)."""
    from .convert import config_path, load_yolov5_safetensors

    if Path(path).suffix == ".safetensors" and config_path(path).is_file():
        return load_yolov5_safetensors(path)
    if checkpoint_family(path) == "yolov5":
        from .rebuild import read_yolov5_checkpoint, rebuild

        return rebuild(read_yolov5_checkpoint(path))[0]
    return None


def handle_verify(args: argparse.Namespace) -> int | None:
    """``verify A B`` where either side is a YOLOv5-repository file or a converted ``.safetensors`` (float64)."""
    from ..checkpoint_io import load_checkpoint
    from ..cli import EXIT_OK, EXIT_VERIFY_FAILED, _emit
    from .convert import verification_shape
    from ..verify import verify

    for path in (args.a, args.b):
        if Path(path).is_dir():
            raise CheckpointError(f"{path}: is a directory; verify compares two checkpoint files")
    models = [_model_for_verify(p) for p in (args.a, args.b)]
    if all(m is None for m in models):
        return None
    for i, path in enumerate((args.a, args.b)):
        if models[i] is None:
            models[i] = load_checkpoint(path).model
            if models[i] is None:
                raise CheckpointError(f"{path}: holds tensors only, no model to run against {args.a}")
            models[i] = models[i].float().eval()
    report = verify(models[0], models[1], input_shape=verification_shape(models[0]))
    _emit({"a": args.a, "b": args.b, **report.to_dict()}, args.json, str(report))
    return EXIT_OK if report.passed else EXIT_VERIFY_FAILED
