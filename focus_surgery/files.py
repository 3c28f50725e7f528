"""Checkpoint files in, reports out: the one pipeline ``convert_file``, and ``inspect_file``, ``verify_files``.

``convert_file`` is the only place that checks options (once, against the table the sources declare), asks the
registry, proves, raises a failed check and writes: load -> source -> options -> convert -> write to a temporary
file -> read back and prove (``sources.proof``) -> rename -> report.
Errors raise: ``CheckpointError`` / ``ConversionError`` for bad input, ``VerificationFailed`` (carrying its
``ConvertReport``) for a check that did not pass; then nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any

from .atomic_io import checked_before_rename
from .errors import CheckpointError, ConversionError, FocusSurgeryError, VerificationFailed
from .loader import MODE_VARIABLE, read_checkpoint
from .loader.zip_rewrite import check_copied, recording
from .report import ConvertReport, line
from .sources import SOURCES, ConvertOptions, Source, load, source_for
from .sources.base import ANY_LAYOUT, OWN_OPTIONS, STATED, suffix_of
from .sources.proof import capture, prove_written
from .verify import verify

__all__ = ["ConvertOptions", "ConvertReport", "VerificationFailed", "accepted", "check_options", "convert_file"]
__all__ += ["convert_one", "inspect_file", "verify_files"]

TARGETS, SCOPES, LAYOUTS = ("conv", "focus", "s2d", "fastest"), ("stem", "all"), ("ultralytics", "yolov5")
PROOFS = ("model", "stem")  # --proof: the whole model run where the file holds one (default), or its stems only


def accepted() -> list[dict[str, Any]]:
    """The table options are checked against: one row per source, asked in this order (by specificity)."""
    return [
        {"source": s.name, "to": s.targets, "scope": s.scopes, "outputs": dict(s.outputs), "uses": s.uses}
        for s in SOURCES
    ]


def check_options(source: Source, src: Path, dst: Path, **options: Any) -> ConvertOptions:
    """``options`` as ``ConvertOptions``, once they are what ``source`` declares it accepts.

    Raises:
        ConversionError: An unknown option, a target / scope / layout the source does not convert, or an option
            given that nothing will read (``--block-size`` for a model file, ``--tolerance`` without ``--verify``,
            ``--input-size`` for another target than ``fastest``): refused, never silently ignored.
        CheckpointError: An output suffix the source does not write (in that layout).
    """
    unknown = sorted(set(options) - ({f.name for f in dataclasses.fields(ConvertOptions)} - {"stated"}))
    if unknown:
        raise ConversionError(f"unknown option {unknown[0]!r} (see ConvertOptions)")
    options = {k: v for k, v in options.items() if not (k in STATED and v is None)}  # None: not given
    opts = ConvertOptions(**options, stated=tuple(k for k in STATED if k in options))
    for flag, every, declared in (("to", TARGETS, source.targets), ("scope", SCOPES, source.scopes)):
        value = getattr(opts, flag)
        if value not in every:
            raise ConversionError(f"--{flag} {value!r}: use {', '.join(every)}")
        if value not in declared:
            raise ConversionError(
                f"{src}: a {source.name} checkpoint converts --{flag} {' or '.join(declared)}, not {value}"
            )
    defaults = ConvertOptions()
    given = [k for k in OWN_OPTIONS if getattr(opts, k) != getattr(defaults, k) and k not in source.uses]
    if given:
        flag = "--" + given[0].replace("_", "-")
        readers = ", ".join(s.name for s in SOURCES if given[0] in s.uses)
        raise ConversionError(f"{src}: a {source.name} checkpoint does not use {flag} ({readers} do): drop {flag}")
    if opts.proof not in PROOFS:
        raise ConversionError(f"--proof {opts.proof!r}: use {', '.join(PROOFS)}")
    if opts.proof != PROOFS[0] and not opts.verify:
        raise ConversionError(f"{src}: --proof chooses the check of --verify: add --verify or drop --proof")
    if opts.tolerance is not None and not opts.verify:
        raise ConversionError(f"{src}: --tolerance bounds the check of --verify: add --verify or drop --tolerance")
    sized = [k for k in ("input_size", "batch") if getattr(opts, k) != getattr(defaults, k)]
    if sized and opts.to != "fastest":
        flag = "--" + sized[0].replace("_", "-")
        raise ConversionError(f"{src}: {flag} is the shape --to fastest times: drop it or convert --to fastest")
    if opts.layout is not None and opts.layout not in LAYOUTS:
        raise ConversionError(f"--layout {opts.layout!r}: use {', '.join(LAYOUTS)}")
    if ANY_LAYOUT in source.outputs and opts.layout not in (None, LAYOUTS[0]):  # one layout: asking another is refused
        raise ConversionError(
            f"{src}: a {source.name} checkpoint is written in its own layout; --layout is for YOLOv5-repository "
            f"files: drop --layout {opts.layout}"
        )
    layout = "" if ANY_LAYOUT in source.outputs else (opts.layout or LAYOUTS[0])  # a fallback checks its own suffix
    suffixes = source.outputs.get(layout)
    if suffixes is None:
        raise ConversionError(f"{src}: a {source.name} checkpoint is written --layout {' or '.join(source.outputs)}")
    if dst.suffix.lower() == ".safetensors" and dst.suffix != ".safetensors":  # the writers test the exact name
        raise CheckpointError(f"{dst}: a safetensors output is named '.safetensors' (lower case): rename it")
    if suffix_of(dst, suffixes) not in suffixes:
        where = f"{source.name} checkpoint" + (f" in --layout {layout}" if layout else "")
        raise CheckpointError(f"{dst}: unknown output type {dst.suffix!r} for a {where}; use {', '.join(suffixes)}")
    return opts


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> ConvertReport:
    """Convert one checkpoint file and write ``dst`` atomically in the source's own format.

    Args:
        src, dst: Input and output files (``dst`` must differ from ``src``).
        **options: ``ConvertOptions`` fields (``to``, ``scope``, ``verify``, ``block_size``, ``order``, ...).

    Returns:
        (ConvertReport): What was found, changed, measured and written (``report["key"]`` reads its JSON form);
            ``nothing_to_do`` says why nothing was written when the input already is what was asked.

    With ``verify``, the written file is read back before it is renamed into place and proven against the original
    (``sources.proof``): ``report.proof`` says which proof it was (``model``, ``stem``, ``layout only``).

    Raises:
        VerificationFailed: The float64 check failed, or measured nothing; nothing written (``.report`` holds the
            measurement).
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        raise CheckpointError(f"{src}: is a directory, not a checkpoint file (give an output folder to convert it all)")
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: refusing to overwrite the input; write to another file")
    # a .pt output of a zip input is written by copying its records, each CRC-32 checked as it streams: the load
    # skips the storages' CRC pass (reading every byte twice) and ``_records_checked`` makes up for it elsewhere
    copies_records = suffix_of(dst) != ".safetensors" and not os.environ.get(MODE_VARIABLE)  # not the user's mode
    loaded = load(src, "mmap-nocrc" if copies_records else "mmap")
    deferred = copies_records and loaded.container == "zip"
    try:
        source = source_for(loaded)
        opts = check_options(source, src, dst, **options)
        report = source.convert(loaded, opts)
    except FocusSurgeryError as error:
        if deferred:  # a corrupt file is refused as corrupt, not by what its corrupt bytes made the conversion say
            _records_checked(src)
        if not isinstance(error, ConversionError) or str(src) in str(error):
            raise
        try:  # raised deep in a model's own code path: say which file it was
            named = type(error)(f"{src}: {error}")
        except TypeError:  # a subclass with its own constructor
            named = ConversionError(f"{src}: {error}")
        raise named from None
    report.src, report.dst = str(src), str(dst)
    # the writer holds the converted content: views of the input's mapping (loader mode mmap), never handed out
    write, report.write = report.write, None
    try:
        if deferred and (report.nothing_to_do or report.problem is not None):
            _records_checked(src)
        if report.nothing_to_do:  # the input already is what was asked: nothing written, exit 0
            return report
        if report.problem is not None:
            raise VerificationFailed(f"{src}: verification failed ({report.problem}); {dst} not written", report)
        checked: list[bool] = []  # the atomic write's checks ran (its temporaries, before the rename)
        proven: list[bool] = []  # --verify: the proof ran and said which proof it was

        def records_checked(pairs: list[tuple[Path, Path]]) -> None:  # before any proof, before anything is renamed
            if deferred and not any(outcome.dst == str(tmp) for outcome in copies for _, tmp in pairs):
                _records_checked(src)  # not a zip copy (another writer): the pass the load skipped
            checked.append(True)

        with recording() as copies, checked_before_rename(records_checked):
            if not opts.verify:
                written = write(dst)
            else:  # the written file is read back and proven before it is renamed into place
                # the input read again on its own (the conversion edited it); unchecked where the copy checks it
                original = capture(source, src, opts, "mmap-nocrc" if deferred else "mmap")

                def prove(pairs: list[tuple[Path, Path]]) -> None:
                    copied = _prove_copied(report, copies, pairs)  # first: every record of a zip copy's file checked
                    prove_written(report, source, loaded, original, opts, pairs, copied)
                    proven.append(report.proof is not None)

                with checked_before_rename(prove):
                    written = write(dst)
        paths = [Path(p) for p in written] if isinstance(written, list) else [dst]
        try:  # a writer that bypassed the atomic write: its checks had not run, so nothing of it may stand
            if opts.verify and not any(proven):
                raise VerificationFailed(
                    f"{src}: verification failed (--verify measured nothing); {dst} not written", report
                )
            if deferred and not checked:
                _records_checked(src)
        except FocusSurgeryError:
            for path in paths:
                path.unlink(missing_ok=True)
            raise
        if "write" not in report.fields:  # which writer ran: the zip copy, else the source's own (torch.save, ...)
            report.fields["write"] = copies[-1].to_dict() if copies else {"path": "rewritten"}
        report.written = [str(p) for p in paths]
        return report
    finally:  # what the proof needed: the converted model, whose tensors may still be views of the input's mapping
        report.after = None


def _records_checked(src: Path) -> None:
    """Every record's CRC-32 of ``src`` (the loader in mode ``mmap``): the check a ``mmap-nocrc`` load left out.

    Raises:
        CheckpointError: A record fails its CRC-32 (one line naming it), or the file changed since it was read.
    """
    read_checkpoint(src, "mmap")


def _prove_copied(report: ConvertReport, copies: list, pairs: list[tuple[Path, Path]]) -> Any:
    """Every record a zip-copy write copied is in its temporary file with the input's size and CRC-32, its bytes
    read back, and every other record's CRC-32 right (``report.fields["write"]["copied_identical"]``); returns that
    write's ``Outcome`` (None where no zip copy wrote these temporaries).

    Raises:
        VerificationFailed: A record differs or fails its CRC-32; nothing is put in place.
    """
    found = None
    for outcome in copies:
        if not any(str(tmp) == outcome.dst for _, tmp in pairs):
            continue
        check = check_copied(outcome, outcome.dst)
        report.fields["write"] = {**outcome.to_dict(), "copied_identical": check}
        if not check["passed"]:
            report.problem = check["problem"]
            text = f"{report.src}: verification failed ({report.problem}); {report.dst} not written"
            raise VerificationFailed(text, report)
        found = outcome
    return found


def convert_one(src: str, dst: str, args: argparse.Namespace) -> dict[str, Any]:
    """``convert_file`` with the command line's namespace, as its JSON form (the folder runner's unit of work)."""
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    return convert_file(src, dst, **{k: v for k, v in vars(args).items() if k in fields}).to_dict()


def geometry(source: Source, path: Any, block_size: int | None = None, order: str | None = None) -> dict[str, Any]:
    """The ``--block-size`` / ``--order`` given (None: not given) as keywords for ``source``, which must read them.

    Raises:
        ConversionError: One given that the source does not read (as ``convert`` refuses it), or an unknown order.
    """
    given = {k: v for k, v in (("block_size", block_size), ("order", order)) if v is not None}
    for key in given:
        if key not in source.uses:
            flag = "--" + key.replace("_", "-")
            readers = ", ".join(s.name for s in SOURCES if key in s.uses)
            raise ConversionError(f"{path}: a {source.name} checkpoint does not use {flag} ({readers} do): drop {flag}")
    if "order" in given:
        from .orders import check_order

        check_order(given["order"])
    if given.get("block_size", 2) < 2:
        raise ConversionError(f"{path}: --block-size {given['block_size']}: a space-to-depth block is 2 or more")
    return given


def inspect_file(src: str | os.PathLike, block_size: int | None = None, order: str | None = None) -> dict[str, Any]:
    """What a checkpoint holds: its source, stems and what they convert to; ``summary`` is the text form.

    ``block_size`` / ``order``: a state dict's stem geometry, as ``convert`` takes it (refused for a source that
    does not read it)."""
    if Path(src).is_dir():
        raise CheckpointError(f"{src}: is a directory; inspect one checkpoint file")
    loaded = load(src)
    source = source_for(loaded)
    info = source.inspect(loaded, **geometry(source, src, block_size, order))
    info["summary"] = "\n".join(line(x) for x in info.pop("lines"))
    return info


def verify_files(
    a: str | os.PathLike, b: str | os.PathLike, block_size: int | None = None, order: str | None = None
) -> dict[str, Any]:
    """Compare two checkpoints: their outputs in float64 when both can be run, else their tensors.

    An original and its conversion compare too: the stem of ``a`` is remapped to ``b``'s form (with ``block_size``
    / ``order`` where the file holds none) before every tensor is compared. Never passes on nothing: zero outputs
    or tensors compared, or an output scale of 0, is a failure with the reason in ``problem``. ``compared`` says
    which comparison was done.
    """
    for path in (a, b):
        if Path(path).is_dir():
            raise CheckpointError(f"{path}: is a directory; verify compares two checkpoint files")
    loaded = [load(a), load(b)]
    sources = [source_for(x) for x in loaded]
    readers = [(s, p) for s, p in zip(sources, (a, b)) if "block_size" in s.uses]  # state dicts: no geometry
    # the most specific of them compares (a darknet original and its .safetensors: darknet's stem remap), else b's
    reader, path = max(reversed(readers), key=lambda r: r[0].specificity) if readers else (sources[1], b)
    given = geometry(reader, path, block_size, order)  # refused where neither file reads them
    models = [s.model(x) for s, x in zip(sources, loaded)]  # None: tensors only (then both are compared as tensors)
    if all(m is not None for m in models):
        report = verify(models[0], models[1])
        result = {"a": str(a), "b": str(b), "compared": "outputs of both models in float64", **report.to_dict()}
        result["summary"] = line(f"{report} [{result['compared']}]")
        return result
    shape = {k: v for k, v in given.items() if k == "block_size"}
    tensors = [s.state_dict(x, **shape) if "block_size" in s.uses else s.state_dict(x) for s, x in zip(sources, loaded)]
    check = reader.compare_tensors(*tensors, **given)
    result = {"a": str(a), "b": str(b), **check}
    verdict = "PASS" if check["passed"] else "FAIL"
    err = check["max_abs_err"]
    text = f"{verdict}: max_abs_err={err:.3e} over {check['tensors']} tensors" if err is not None else f"{verdict}"
    result["summary"] = line(
        text + f" [{check['compared']}]" + (f" - {check['problem']}" if check.get("problem") else "")
    )
    return result
