"""The float64 check: a model and its planned changes run on ONE float64 copy, before and after the changes, and the
outputs compared (``compare``, also behind ``verify``)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..limits import check_allocation, checked_forward
from .inputs import infer_input_shape, input_multiple
from .site import Change, ConversionError

DEFAULT_TOLERANCE = 1e-10


@dataclass
class VerificationReport:
    """Outcome of a comparison: ``passed`` when the structures match, something non-zero was compared and
    ``max_abs_err <= tolerance * max(1, output_scale)`` (the largest absolute reference output); ``problem`` says why
    nothing could be compared."""

    max_abs_err: float
    max_rel_err: float
    output_scale: float
    tolerance: float
    passed: bool
    num_outputs: int
    input_shapes: list
    dtype: str
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = (
            f"{'PASS' if self.passed else 'FAIL'}: max_abs_err={self.max_abs_err:.3e} "
            f"max_rel_err={self.max_rel_err:.3e} (output scale {self.output_scale:.3g}, {self.num_outputs} output "
            f"tensor(s), {self.dtype}, inputs {', '.join('x'.join(map(str, s)) for s in self.input_shapes)})"
        )
        return text + (f" - {self.problem}" if self.problem else "")


def flatten_outputs(output: Any) -> list[torch.Tensor]:
    """Tensors of a nested output (tensor, list, tuple, dict sorted by key), depth first."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output, key=str) for t in flatten_outputs(output[key])]
    return [t for item in output for t in flatten_outputs(item)] if isinstance(output, (list, tuple)) else []


def compare(ref_out: list, cand_out: list, shapes: list, name: str, tolerance: float) -> VerificationReport:
    """Compare two flattened outputs (``flatten_outputs``) of runs on inputs of ``shapes`` in dtype ``name``."""

    def failed(problem: str) -> VerificationReport:
        return VerificationReport(math.inf, math.inf, math.nan, tolerance, False, len(ref_out), shapes, name, problem)

    if len(ref_out) != len(cand_out):
        return failed(f"reference returned {len(ref_out)} tensors, candidate {len(cand_out)}")
    max_abs, scale = 0.0, 0.0
    for index, (a, b) in enumerate(zip(ref_out, cand_out)):
        if a.shape != b.shape:
            return failed(
                f"output {index} has shape {tuple(a.shape)} in the reference, {tuple(b.shape)} in the candidate"
            )
        if a.numel() == 0:
            continue
        a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
        for which, t in (("reference", a64), ("candidate", b64)):
            if not torch.isfinite(t).all():
                return failed(f"output {index} of the {which} is not finite")
        max_abs = max(max_abs, float((a64 - b64).abs().max()))
        scale = max(scale, float(a64.abs().max()))
    if not any(a.numel() for a in ref_out):  # nothing compared is never a pass
        return failed(f"the models returned {len(ref_out)} output tensor(s) with 0 elements: nothing to compare")
    if scale == 0.0:  # all-zero outputs agree with any other all-zero model: no evidence either way
        zero = failed("the reference outputs are all zero (output scale 0): nothing was compared")
        return dataclasses.replace(zero, max_abs_err=max_abs, output_scale=0.0)
    passed = max_abs <= tolerance * max(1.0, scale)
    return VerificationReport(max_abs, max_abs / scale, scale, tolerance, bool(passed), len(ref_out), shapes, name)


def apply(model: nn.Module, changes: list[Change]) -> None:
    """Put each change's module in place (no checks; ``plan`` made them)."""
    for change in changes:
        parent_path, _, name = change.path.rpartition(".")
        setattr(model.get_submodule(parent_path), name, change.new)


@torch.no_grad()
def check(
    model: nn.Module,
    changes: list[Change],
    inputs: torch.Tensor | tuple | None = None,
    input_shape: tuple[int, ...] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    multiple: int = 1,
    seed: int = 0,
    grown: int = 0,
) -> VerificationReport:
    """Run ``model`` before and after ``changes`` (from ``plan``) in float64 on one copy; ``model`` is not modified.

    Args:
        inputs, input_shape: Inputs, or the shape of random inputs in [0, 1) (inferred when both are None).
        tolerance (float): Pass threshold on the error relative to the output scale (floored at 1).
        multiple (int): What the changed model's input height and width must be multiples of, besides the model's.
        grown (int): How many times an inferred input size was already grown for a stacked stride (internal).

    Raises:
        ConversionError: The model cannot run on the inputs (the message names the changed paths).
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs_inferred, sizes, args = (inputs is None and input_shape is None) or 0 < grown < 8, {}, ()
    paths = ", ".join(c.path or "<root>" for c in changes if c.record is not None)
    paths += ": " if paths else ""
    try:
        if inputs is None:
            shape = input_shape if input_shape is not None else infer_input_shape(model, multiple=multiple)
            check_allocation(tuple(shape), torch.float64, "the verification input")  # its size may come from the file
            inputs = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        args = tuple(a.to(device, torch.float64) if a.is_floating_point() else a.to(device) for a in args)
        work = copy.deepcopy(model).eval().to(device, torch.float64)
        for c in changes:  # each changed module's input size in the reference run; hooks go with the old modules
            work.get_submodule(c.path).register_forward_pre_hook(functools.partial(_record_size, sizes, c.path))
        with checked_forward():  # bounded when the caller set a forward_memory_limit (models read from files)
            ref_out = _run("the model itself", work, args, paths)  # e.g. odd size for a Focus's slices
            apply(work, [Change(c.path, copy.deepcopy(c.new).to(device, torch.float64)) for c in changes])
            cand_out = _run("the converted model", work.eval(), args, paths)
    except ValueError as error:  # e.g. an input size the new space-to-depth block does not divide
        if isinstance(error, ConversionError):
            raise
        grow = _growth(changes, sizes) if inputs_inferred and len(args) == 1 and args[0].ndim == 4 else 1
        if grow > 1:  # the inferred size fed a stacked stride an odd size: the same shape, whole blocks everywhere
            b, c, h, w = args[0].shape
            return check(model, changes, None, (b, c, h * grow, w * grow), tolerance, 1, seed, grown=grown + 1)
        raise ConversionError(f"{paths}{error}; model left unchanged") from error
    return compare(ref_out, cand_out, [list(a.shape) for a in args], "float64", tolerance)


def _run(which: str, model: nn.Module, args: tuple, paths: str) -> list[torch.Tensor]:
    """``model``'s flattened outputs on its own copy of ``args`` (a model that writes into its input changes neither
    run); a ``ConversionError`` in one line when it does not run: which model, why, and what to pass instead."""
    try:
        return flatten_outputs(model(*(a.clone() for a in args)))
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        shape = tuple(args[0].shape) if args else ()
        why = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        hint = ""
        if len(shape) == 4:
            multiple = input_multiple(model)
            if shape[2] % multiple or shape[3] % multiple:
                hint = f"; its space-to-depth stem needs height and width divisible by {multiple}"
        raise ConversionError(
            f"{paths}{which} does not run on input {'x'.join(map(str, shape))} ({why}){hint}; "
            "pass inputs= or input_shape= that it accepts; model left unchanged"
        ) from error


def _record_size(sizes: dict, path: str, module: nn.Module, args: tuple) -> None:
    if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
        sizes.setdefault(path, tuple(args[0].shape[-2:]))


def _growth(changes: list[Change], sizes: dict[str, tuple[int, int]]) -> int:
    """What to scale the input height and width by so each changed module's input divides by its new multiple."""
    grow = 1
    for change in changes:
        multiple = input_multiple(change.new)
        for size in sizes.get(change.path, ()):
            grow = math.lcm(grow, multiple // math.gcd(multiple, size))
    return grow
