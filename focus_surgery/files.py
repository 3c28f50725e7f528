"""Checkpoint files in, reports out: ``convert_file``, ``inspect_file``, ``verify_files`` over the sources registry.

Every function loads each file once, safely, asks the registry which source reads it, and returns one JSON-able
dict with a human-readable ``summary`` (the command line prints one or the other). Errors raise: ``CheckpointError``
/ ``ConversionError`` / ``ValueError`` for bad input, ``VerificationFailed`` for a check that did not pass.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .checkpoint_io import CheckpointError
from .sources import ConvertOptions, VerificationFailed, load, source_for
from .verify import verify

__all__ = ["ConvertOptions", "VerificationFailed", "convert_file", "convert_one", "inspect_file", "verify_files"]


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Convert one checkpoint file and write ``dst`` atomically in the source's own format.

    Args:
        src, dst: Input and output files (``dst`` must differ from ``src``).
        **options: ``ConvertOptions`` fields (``to``, ``scope``, ``verify``, ``block_size``, ``order``, ...).

    Returns:
        (dict): ``src``, ``dst``, ``source`` and the source's report (``max_abs_err`` included), ``summary``.
    """
    src, dst = Path(src), Path(dst)
    opts = ConvertOptions(**options)
    if src.is_dir():
        raise CheckpointError(f"{src}: is a directory, not a checkpoint file (give an output folder to convert it all)")
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: refusing to overwrite the input; write to another file")
    loaded = load(src)
    source = source_for(loaded)
    report = source.convert(loaded, dst, opts)
    result = {"src": str(src), "dst": str(dst), **report}
    err = result.get("max_abs_err")
    before, after = result.get("stem_before", "stem"), result.get("stem_after", result.get("chosen", opts.to))
    text = (
        f"converted {src} -> {dst} ({before} -> {after})"
        if "stem_before" in result
        else (
            f"converted {src} -> {dst} (stem to {'fastest here: ' + str(after) if opts.to == 'fastest' else opts.to}"
            f"{', scope all' if opts.scope == 'all' else ''})"
        )
    )
    if err is not None:
        text += f", verified: max_abs_err={err:.3e}"
    if result.get("note"):
        text = f"{src} is {result['note'].split(';')[0]}; " + text
    if result.get("loads_into"):
        text += f"\n  the result loads into the model after this change: {result['loads_into']}"
    result["summary"] = text
    return result


def convert_one(src: str, dst: str, args: argparse.Namespace) -> dict[str, Any]:
    """``convert_file`` with the command line's namespace (the folder runner calls this once per file)."""
    fields = ConvertOptions.__dataclass_fields__
    return convert_file(src, dst, **{k: v for k, v in vars(args).items() if k in fields})


def inspect_file(src: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint holds: its source, stems and what they convert to; ``summary`` is the text form."""
    if Path(src).is_dir():
        raise CheckpointError(f"{src}: is a directory; inspect one checkpoint file")
    loaded = load(src)
    info = source_for(loaded).inspect(loaded)
    info["summary"] = "\n".join(info.pop("lines"))
    return info


def verify_files(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
    """Compare two checkpoints: their outputs in float64 when both can be run, else their tensors.

    Never passes on nothing: zero outputs or tensors compared, or an output scale of 0, is a failure with the
    reason in ``problem``. ``compared`` says which comparison was done.
    """
    for path in (a, b):
        if Path(path).is_dir():
            raise CheckpointError(f"{path}: is a directory; verify compares two checkpoint files")
    loaded = [load(a), load(b)]
    sources = [source_for(x) for x in loaded]
    models = [s.model(x) for s, x in zip(sources, loaded)]  # None: tensors only (then both are compared as tensors)
    if all(m is not None for m in models):
        report = verify(models[0], models[1])
        result = {"a": str(a), "b": str(b), "compared": "outputs of both models in float64", **report.to_dict()}
        result["summary"] = f"{report} [{result['compared']}]"
        return result
    check = sources[1].compare_tensors(sources[0].state_dict(loaded[0]), sources[1].state_dict(loaded[1]))
    result = {"a": str(a), "b": str(b), **check}
    verdict = "PASS" if check["passed"] else "FAIL"
    err = check["max_abs_err"]
    text = f"{verdict}: max_abs_err={err:.3e} over {check['tensors']} tensors" if err is not None else f"{verdict}"
    result["summary"] = text + f" [{check['compared']}]" + (f" - {check['problem']}" if check.get("problem") else "")
    return result
