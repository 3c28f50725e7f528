"""Verification: run two models on the same inputs, in float64, and measure how far their outputs differ."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from .limits import check_allocation, checked_forward
from .stems.check import DEFAULT_TOLERANCE, VerificationReport, compare, flatten_outputs
from .stems.inputs import infer_input_shape, input_channels_and_multiple


class VerifiedReport:
    """Mixin for dataclass reports with a ``verification`` field: ``max_abs_err`` and a JSON-ready ``to_dict``."""

    verification: VerificationReport | None

    @property
    def max_abs_err(self) -> float | None:
        return self.verification.max_abs_err if self.verification else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "max_abs_err": self.max_abs_err}


def _common_input_shape(reference: nn.Module, candidate: nn.Module) -> tuple[int, int, int, int]:
    """A shape valid for both models: the least common multiple of each one's own valid height and width."""
    known = input_channels_and_multiple(reference), input_channels_and_multiple(candidate)
    multiple = math.lcm(known[0][1], known[1][1])
    a, b = (infer_input_shape(m, multiple=multiple, known=k) for m, k in zip((reference, candidate), known))
    return a[0], a[1], math.lcm(a[2], b[2]), math.lcm(a[3], b[3])


def _prepare(model: nn.Module, dtype: torch.dtype | None, device: torch.device, copies: bool = True) -> nn.Module:
    model = (copy.deepcopy(model) if copies else model).eval().to(device)
    return model.to(dtype) if dtype is not None else model


@torch.no_grad()
def verify(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: torch.Tensor | tuple | list | None = None,
    input_shape: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = torch.float64,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    copies: bool = True,
) -> VerificationReport:
    """Compare the outputs of ``reference`` and ``candidate`` on the same inputs, on copies.

    Args:
        inputs, input_shape: Input tensor(s), or the shape of a random input in [0, 1) (valid for both when None).
        dtype (torch.dtype | None): Run both copies in this dtype (float64 by default); None keeps their dtype.
        tolerance (float): Pass threshold on the error relative to the output scale (floored at 1).
        copies (bool): False runs the models themselves, changed to ``dtype`` and eval mode in place (for models
            built for this comparison alone: no copy of a large model is made).

    Returns:
        (VerificationReport): Errors, scale, pass/fail.
    """
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    if inputs is None:
        shape = tuple(input_shape) if input_shape is not None else _common_input_shape(reference, candidate)
        check_allocation(shape, torch.float64, "the verification input")  # its size may come from the file
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.rand(shape, generator=generator, dtype=torch.float64)
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    args = tuple(a.to(device=device, dtype=dtype or a.dtype) if a.is_floating_point() else a.to(device) for a in args)
    with checked_forward():  # bounded when the caller set a forward_memory_limit (models read from files)
        ref_out = flatten_outputs(_prepare(reference, dtype, device, copies)(*args))
        cand_out = flatten_outputs(_prepare(candidate, dtype, device, copies)(*args))
    name = str(dtype or args[0].dtype).replace("torch.", "")
    return compare(ref_out, cand_out, [list(a.shape) for a in args], name, tolerance)
