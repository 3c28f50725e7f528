"""The proof of a conversion, in one place: the written temporaries read back as a user reads them (before they are
renamed into place), then run against the original in float64 (**model**), else each stem run and every tensor
compared bit for bit (**stem**; **layout only** when the geometry was assumed). A failure raises VerificationFailed."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..atomic_io import signals_held
from ..errors import FocusSurgeryError, VerificationFailed
from ..report import PROOF_LAYOUT, PROOF_MODEL, PROOF_STEM, ConvertReport
from ..verify import verify
from .base import ConvertOptions, Source
from .compare import identical_by_copy, same_bits, stem_check
from .loading import Loaded

__all__ = ["Original", "all_tensors", "capture", "compare_every_tensor", "proof_kind", "prove_written", "read_back"]


@dataclass
class Original:
    """What the proof runs the written file against, taken before the conversion (which may edit the loaded
    records in place): the runnable model, else the stems (``Source.stems``) and the tensors."""

    model: nn.Module | None
    stems: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)
    leaves: list = field(default_factory=list)  # every tensor the file holds (optimizer state, each model copy)
    stats: Any = None  # the read's ``LoadStats`` (which record each tensor views: ``zip_rewrite.copied_views``)


def capture(source: Source, path: str | os.PathLike, options: ConvertOptions, mode: str = "mmap") -> Original:
    """The original as its users load it (read again on its own, in loader mode ``mode``): its model, else its stems
    and tensors. Raises CheckpointError when the file changed under us into one that does not read."""
    from . import load

    loaded = load(path, mode)
    try:  # --proof stem: no model is built or run, even where the file holds one
        model = source.model(loaded) if options.proof != "stem" else None
    except FocusSurgeryError:  # e.g. a YOLOv5 head without an Ultralytics counterpart: no model proof
        model = None
    if model is not None or source.own_proof:
        return Original(model)
    shape = {"block_size": options.block_size} if "block_size" in source.uses else {}
    sd = source.state_dict(loaded, **shape)  # as is: a StemTensors keeps the stem the file names (timm s2d)
    stats = getattr(loaded, "stats", None)
    return Original(None, source.stems(loaded, options), sd, all_tensors(loaded.content), stats)


def all_tensors(content: Any) -> list[torch.Tensor]:
    """Every tensor ``content`` holds, each shared one once, in the one traversal's order (``loader.Transform``)."""
    from ..loader import Transform

    found: list[torch.Tensor] = []

    def collect(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        return obj

    Transform(collect)(content)
    return found


def compare_every_tensor(before: list[torch.Tensor], after: list[torch.Tensor]) -> dict[str, Any]:
    """Every tensor of the written file against the original's, in the file's order: equal bit for bit, or where the
    conversion changed its shape, the same non-zero values (a remap permutes them; a bigger kernel adds zeros).
    Returns ``tensors`` (how many), ``remapped`` (how many changed shape), ``passed``, ``problem``."""
    result: dict[str, Any] = {"tensors": len(after), "remapped": 0, "passed": False, "problem": ""}
    if len(before) != len(after):
        result["problem"] = f"the file holds {len(after)} tensors, the original {len(before)}"
        return result
    for i, (a, b) in enumerate(zip(before, after)):
        which = f"tensor {i + 1} of {len(after)} (shape {tuple(a.shape)}"
        if a.shape == b.shape:
            if not same_bits(a, b):
                result["problem"] = f"{which}) differs"
                return result
            continue
        result["remapped"] += 1
        values = [torch.sort(v[v != 0].double()).values for v in (t.detach().reshape(-1) for t in (a, b))]
        if a.dtype != b.dtype or not torch.equal(*values):
            result["problem"] = f"{which} -> {tuple(b.shape)}) does not hold the original's values"
            return result
    result["passed"] = True
    return result


def proof_kind(source: Source, loaded: Loaded, options: ConvertOptions) -> str:
    """``stem``, or ``layout only`` when the stem's order / block size were assumed (not read from the file)."""
    return PROOF_STEM if source.geometry_from_file(loaded, options) else PROOF_LAYOUT


@contextlib.contextmanager
def read_back(written: list[tuple[Path, Path]]) -> Iterator[dict[Path, Path]]:
    """The temporaries of one write under their destinations' names (a ``.safetensors``' JSON, an ONNX graph's data
    file are found by name): hard links in a private folder of the system's temporary folder (nothing left beside the
    user's files if killed), else beside the temporaries; symbolic links, which readers resolve, only as a last resort.
    """
    folders: list[Path] = []
    tries = ((None, os.link), (Path(written[0][1]).parent, os.link), (None, _symlink))
    try:
        for n, (where, make) in enumerate(tries):
            with signals_held():  # a signal between making the folder and listing it would leave it behind
                folders.append(Path(tempfile.mkdtemp(prefix=".focus-surgery-proof-", dir=where)))
            try:
                view = {}
                for destination, tmp in written:
                    make(tmp, folders[-1] / destination.name)
                    view[destination] = folders[-1] / destination.name
                break
            except OSError:
                if n == len(tries) - 1:
                    raise
        yield view
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _symlink(tmp: Path, link: Path) -> None:
    os.symlink(Path(tmp).resolve(), link)


def _fail(report: ConvertReport, problem: str, dst: Any) -> VerificationFailed:
    report.problem = problem
    return VerificationFailed(f"{report.src}: verification failed ({problem}); {dst} not written", report)


def prove_written(
    report: ConvertReport,
    source: Source,
    loaded: Loaded,
    before: Original,
    options: ConvertOptions,
    written: list[tuple[Path, Path]],
    copied: Any = None,
) -> None:
    """Read the written ``dst`` back and prove it against the original (``report.proof`` / ``max_abs_err`` /
    ``fields["verification"]``); raise VerificationFailed when it does not load, compute or hold what the original does.

    ``copied``: the zip copy's ``Outcome`` where it wrote ``dst`` and ``check_copied`` passed on it (every record's
    CRC-32 checked there, so the read-back skips its own pass): a tensor viewing a record copied byte for byte from
    the one its original views is the same bits without reading either (``compare.identical_by_copy``).
    """
    from ..loader.zip_rewrite import copied_views
    from . import load, source_for

    dst = Path(report.dst)
    if not any(d == dst for d, _ in written):  # another file of the same write (a JSON of a pair): proven with dst
        return
    with read_back(written) as view:
        try:
            back = load(view[dst], "mmap" if copied is None else "mmap-nocrc")
            proven = None if copied is None else copied_views(copied, before.stats, getattr(back, "stats", None))
            back_source = source_for(back)
            check = source.prove_written(loaded, back, report, options)  # a source with its own runtime (ONNX)
            if check is not None:
                return _settle(report, check)
            original = before.model
            candidate = back_source.model(back) if original is not None else None
            if candidate is None and original is not None and isinstance(report.after, nn.Module):
                candidate = copy.deepcopy(report.after)  # tensors only (.safetensors): loaded as users load them
                candidate.load_state_dict(back_source.state_dict(back), strict=True)
            if original is not None and candidate is not None:
                result = verify(original, candidate, copies=False)  # float64; both models are this proof's own
                how = "the written file loaded back and run against the original in float64"
                _settle(report, result, how)
                return _in_target_form(report, dst, options, sites=[("", candidate)])
            with identical_by_copy(proven):
                tensors, written_sd = _compare_tensors(source, back_source, back, before, report, options)
            own = report.fields.get("verification") if not before.stems else None
            ran = isinstance(own, dict) and report.max_abs_err is not None  # a source that ran its stem in memory
            runs = []
            if not ran:  # the original's stems the written file holds, each against the written file's, by name
                held = source.held_stems(loaded, before.stems, back)
                written_stems = source.written_stems(loaded, back, back_source, options)
                runs = _run_stems(report, dst, held, written_stems)
                _in_target_form(report, dst, options, sites=[(name, module) for name, module, _ in written_stems])
            else:  # a state dict's stem, checked in memory: the form of the one the written file holds
                _in_target_form(report, dst, options, state_dict=written_sd)
        except (VerificationFailed, MemoryError, torch.OutOfMemoryError):  # the command says what was left
            raise
        except Exception as error:  # noqa: BLE001 - any failure to read back or run what was written fails the proof
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            text = text.replace(str(view[dst]), str(dst))
            problem = f"the written file, read back, does not load or run: {type(error).__name__}: {text}"
            raise _fail(report, problem, dst)
    if not tensors["passed"]:
        tensors = {**tensors, "problem": f"the written file's tensors: {tensors['problem']}"}
    report.proof = proof_kind(source, loaded, options)
    if ran:  # the stem's own float64 run (in memory), and the written file's tensors measured here
        check = {**own, "tensors": tensors, "passed": bool(own.get("passed")) and tensors["passed"]}
        check["problem"] = "" if check["passed"] else (own.get("problem") or tensors["problem"])
        report.fields["verification"] = check
    else:
        reports = [r for _, r in runs]
        stem = reports[0].to_dict() if len(reports) == 1 else [r.to_dict() for r in reports]
        how = "each stem of the written file run against the original's in float64 (the model's code not run)"
        check = stem_check(stem, reports, tensors, how)
        previous = report.fields.get("verification")
        report.fields["verification"] = {**check, "stems": [name for name, _ in runs]}
        report.max_abs_err = max((r.max_abs_err for r in reports), default=None)
        if isinstance(previous, dict) and isinstance(previous.get("tensors"), int):
            # a source whose --json gave the tensors as a count, with max_abs_err (--layout yolov5): its keys stay,
            # measured here on the written file; the comparison itself under state_dicts, as that source had it
            kept = {k: v for k, v in previous.items() if k not in report.fields["verification"]}
            report.fields["verification"] = {**kept, **report.fields["verification"], "tensors": tensors["tensors"]}
            report.fields["verification"].update(state_dicts=tensors, max_abs_err=report.max_abs_err)
    if not check["passed"]:
        raise _fail(report, check["problem"] or "the stem check failed", dst)


def _compare_tensors(
    source: Source, back_source: Source, back: Loaded, before: Original, report: ConvertReport, options: ConvertOptions
) -> tuple[dict[str, Any], dict]:
    """The written file's tensors against the original's: bit for bit (the stem remapped), dtypes as the original's
    own, and, where the whole file was written back, every tensor it holds (optimizer state, each copy); with the
    written file's state dict (as its reader gives it)."""
    geometry = {k: report.fields.get(k, v) for k, v in _geometry(source, options).items()}  # as converted
    shape = {k: v for k, v in geometry.items() if k == "block_size"}
    written = back_source.state_dict(back, **({} if back_source.uses != source.uses else shape))
    try:  # bit for bit: the stem's remap is a permutation
        tensors = source.compare_tensors(before.tensors, written, **geometry, tolerance=0.0)
    except ValueError:  # a form that remaps one way only (timm's reorg): the written stem to the original's
        tensors = source.compare_tensors(written, before.tensors, **geometry, tolerance=0.0)
    changed = next((k for k, v in written.items() if k in before.tensors and v.dtype != before.tensors[k].dtype), None)
    if changed is not None:  # seen from the original itself: a remap that changed the dtype would agree with itself
        was, now = before.tensors[changed].dtype, written[changed].dtype
        tensors = {**tensors, "passed": False, "problem": f"{changed} is {was} vs {now}: the dtype changed"}
    if type(back_source) is type(source) and Path(report.dst).suffix.lower() != ".safetensors":  # the whole file
        every = compare_every_tensor(before.leaves, all_tensors(back.content))
        tensors = {**tensors, "every_tensor": every}
        if tensors["passed"] and not every["passed"]:
            tensors = {**tensors, "passed": False, "problem": every["problem"]}
    return tensors, written


def _in_target_form(
    report: ConvertReport, dst: Path, options: ConvertOptions, sites: list | None = None, state_dict: Any = None
) -> None:
    """Raise VerificationFailed unless the written file's stems, read back, are in the form the conversion says it
    wrote (``report.to``: ``conv`` a strided conv; ``focus`` / ``s2d`` a space-to-depth form), whatever the original
    was. A file written as the original computes exactly what the original does: only its form tells.

    ``sites``: ``(name, module)`` of the written model (name ``""``: its stems found by ``stems.unconverted`` within
    ``options.scope``) or of each written stem; ``state_dict``: the written state dict (its stem by the file's
    evidence, else by key layout, with each copy it holds). ``--to fastest`` writes the form it timed: not checked.
    """
    from ..state_dict import find_stem
    from ..stems.walk import TARGETS, unconverted

    to = report.to
    if to not in TARGETS:
        return
    wanted = "conv" if to == "conv" else "space-to-depth (focus / s2d)"
    for name, module in sites or []:
        for site in unconverted(module, to, options.scope if not name else "stem"):
            problem = f"the written file's stem {name or site.path!r} is still in {site.form} form, not {wanted}"
            raise _unconverted(report, f"{problem} (unconverted)", dst)
    if state_dict is None:
        return
    block_size = report.fields.get("block_size", options.block_size)
    for place, sd in [(None, state_dict), *getattr(state_dict, "copies", {}).items()]:
        stem = getattr(sd, "stem", None) or find_stem(sd, block_size=block_size)
        under = f" (under '{place}')" if place else ""
        if stem is None:
            raise _unconverted(report, f"the written file holds no stem{under} in {wanted} form (unconverted)", dst)
        if (stem.form == "conv") != (to == "conv"):  # a state dict's forms: conv; focus / reorg (space-to-depth)
            problem = f"the written file's stem {stem.prefix!r}{under} is still in {stem.form} form, not {wanted}"
            raise _unconverted(report, f"{problem} (unconverted)", dst)


def _unconverted(report: ConvertReport, problem: str, dst: Path) -> VerificationFailed:
    """``_fail``, the check already in the report (a model's, or the source's own run of its stem) marked failed."""
    check = report.fields.get("verification")
    if isinstance(check, dict):
        report.fields["verification"] = {**check, "passed": False, "problem": problem}
    return _fail(report, problem, dst)


def _run_stems(report: ConvertReport, dst: Path, before: list, written: list) -> list[tuple[str, Any]]:
    """Each original stem against the written file's stem of the same name, on one input in float64."""
    after = {name: module for name, module, _ in written}
    if not before:
        raise _fail(report, "no stem of the original could be run: nothing to prove", dst)
    runs = []
    for name, module, shape in before:
        if name not in after:
            raise _fail(report, f"the written file has no stem {name!r} to run against the original's", dst)
        runs.append((name, verify(module, after[name], input_shape=shape, copies=False)))
    return runs


def _geometry(source: Source, options: ConvertOptions) -> dict[str, Any]:
    """The block size / order a state-dict comparison remaps the stem with (only sources that read them)."""
    return {k: getattr(options, k) for k in ("block_size", "order") if k in source.uses}


def _settle(report: ConvertReport, check: Any, how: str = "") -> None:
    """A model proof's ``check`` (``.passed``, ``.max_abs_err``, ``.to_dict()``) into the report; raise if failed."""
    fields = check.to_dict()
    report.proof, report.max_abs_err = PROOF_MODEL, check.max_abs_err
    previous = report.fields.get("verification")  # a source's own check of what it wrote (per model, its release)
    kept = {k: v for k, v in previous.items() if k not in fields} if isinstance(previous, dict) else {}
    report.fields["verification"] = {**kept, **fields, **({"compared": how} if how else {})}
    if "max_rel_err" in report.fields and "max_rel_err" in fields:
        report.fields["max_rel_err"] = fields["max_rel_err"]
    if not check.passed:
        raise _fail(report, str(check), report.dst)
