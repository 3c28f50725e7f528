"""Verification: run two models on the same inputs, in float64, and measure how far their outputs differ."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .layers import SpaceToDepth
from .limits import checked_forward
from .stems import recognize

DEFAULT_TOLERANCE = 1e-10


@dataclass
class VerificationReport:
    """Outcome of ``verify``.

    Attributes:
        max_abs_err (float): Largest absolute difference over all output elements.
        max_rel_err (float): ``max_abs_err`` divided by the output scale.
        output_scale (float): Largest absolute value of the reference outputs.
        tolerance (float): Pass threshold on ``max_rel_err`` (scale floored at 1, so tiny outputs are judged
            absolutely).
        passed (bool): Whether the structures match, something non-zero was compared, and
            ``max_abs_err <= tolerance * max(1, output_scale)``. Zero outputs or an output scale of 0 never pass.
        num_outputs (int): Number of output tensors compared.
        input_shapes (list): Shapes of the inputs used.
        dtype (str): Dtype the comparison ran in.
        problem (str): Why it failed when the outputs could not be compared at all, else "".
    """

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
        verdict = "PASS" if self.passed else "FAIL"
        text = (
            f"{verdict}: max_abs_err={self.max_abs_err:.3e} max_rel_err={self.max_rel_err:.3e} "
            f"(output scale {self.output_scale:.3g}, {self.num_outputs} output tensor(s), {self.dtype}, "
            f"inputs {', '.join('x'.join(map(str, s)) for s in self.input_shapes)})"
        )
        return text + (f" - {self.problem}" if self.problem else "")


class VerifiedReport:
    """Mixin for dataclass reports with a ``verification`` field: ``max_abs_err`` and a JSON-ready ``to_dict``."""

    verification: VerificationReport | None

    @property
    def max_abs_err(self) -> float | None:
        return self.verification.max_abs_err if self.verification else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["max_abs_err"] = self.max_abs_err
        return data


def flatten_outputs(output: Any) -> list[torch.Tensor]:
    """Tensors of a nested output (tensor, list, tuple, dict sorted by key), depth first."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output, key=str) for t in flatten_outputs(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in flatten_outputs(item)]
    return []


def input_channels_and_multiple(model: nn.Module) -> tuple[int, int]:
    """Input channels of the first conv, and the product of the space-to-depth block sizes before it."""
    multiple = 1
    for module in model.modules():
        if isinstance(module, SpaceToDepth):
            multiple *= module.block_size
        elif isinstance(module, nn.PixelUnshuffle):
            multiple *= module.downscale_factor
        elif type(module).__name__ == "SpaceToDepth" and isinstance(getattr(module, "bs", None), int):
            multiple *= module.bs  # timm's SpaceToDepth
        elif type(module).__name__ == "Focus" and not any(isinstance(m, SpaceToDepth) for m in module.modules()):
            multiple *= 2  # YOLOv5 / Ultralytics Focus slices by 2
        elif isinstance(module, nn.Conv2d):
            return module.in_channels // (multiple * multiple), multiple
        elif not list(module.children()) and not list(module.parameters()) and not list(module.buffers()):
            found = recognize(module, 1)  # a weightless layer of unknown type (ReOrg, ...): what does it compute?
            multiple *= found.block_size if found is not None else 1
    raise ValueError("cannot infer an input shape (no Conv2d in the model): pass inputs= or input_shape=")


def infer_input_shape(model: nn.Module, batch: int = 2, multiple: int = 1) -> tuple[int, int, int, int]:
    """A valid, non-square input shape for ``model``: timm's configured size, Ultralytics' stride, or a small size.

    Height and width are multiples of ``multiple`` too (timm's configured size is rounded up to one, e.g. 299 -> 300
    for a space-to-depth(2) stem, unless the cfg says the model needs exactly that size).
    """
    channels, own = input_channels_and_multiple(model)
    multiple = math.lcm(own, multiple)
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        _, h, w = cfg["input_size"]
        if not cfg.get("fixed_input_size"):
            h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
        return batch, channels, h, w  # ViTs only accept their configured size
    stride = getattr(model, "stride", None)
    if isinstance(stride, torch.Tensor) and stride.numel():
        multiple = math.lcm(multiple, int(stride.max()))
    multiple = math.lcm(multiple, 32)
    return batch, channels, 2 * multiple, 3 * multiple


def _common_input_shape(reference: nn.Module, candidate: nn.Module) -> tuple[int, int, int, int]:
    """A shape valid for both models: the least common multiple of each one's own valid height and width."""
    multiple = math.lcm(input_channels_and_multiple(reference)[1], input_channels_and_multiple(candidate)[1])
    a, b = infer_input_shape(reference, multiple=multiple), infer_input_shape(candidate, multiple=multiple)
    return a[0], a[1], math.lcm(a[2], b[2]), math.lcm(a[3], b[3])


def _prepare(model: nn.Module, dtype: torch.dtype | None, device: torch.device) -> nn.Module:
    model = copy.deepcopy(model).eval().to(device)
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
) -> VerificationReport:
    """Compare the outputs of two models on the same inputs, on copies (the models are never modified).

    Args:
        reference (nn.Module): The original model.
        candidate (nn.Module): The converted model.
        inputs (torch.Tensor | tuple | None): Input tensor(s); random in [0, 1) of a valid size when None.
        input_shape (tuple | None): Shape of the random input when ``inputs`` is None (inferred when None).
        dtype (torch.dtype | None): Run both copies in this dtype (float64 by default); None keeps their dtype.
        tolerance (float): Pass threshold on the error relative to the output scale (floored at 1).
        seed (int): Seed of the random input.

    Returns:
        (VerificationReport): Errors, scale, pass/fail.
    """
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    if inputs is None:
        shape = tuple(input_shape) if input_shape is not None else _common_input_shape(reference, candidate)
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.rand(shape, generator=generator, dtype=torch.float64)
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    args = tuple(a.to(device=device, dtype=dtype or a.dtype) if a.is_floating_point() else a.to(device) for a in args)
    with checked_forward():  # bounded when the caller set a forward_memory_limit (models read from files)
        ref_out = flatten_outputs(_prepare(reference, dtype, device)(*args))
        cand_out = flatten_outputs(_prepare(candidate, dtype, device)(*args))
    shapes = [list(a.shape) for a in args]
    name = str(dtype or args[0].dtype).replace("torch.", "")

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
        if not torch.isfinite(a64).all():
            return failed(f"output {index} of the reference is not finite")
        if not torch.isfinite(b64).all():
            return failed(f"output {index} of the candidate is not finite")
        max_abs = max(max_abs, float((a64 - b64).abs().max()))
        scale = max(scale, float(a64.abs().max()))
    compared = sum(1 for a in ref_out if a.numel())
    if not compared:  # nothing compared is never a pass
        return failed(f"the models returned {len(ref_out)} output tensor(s) with 0 elements: nothing to compare")
    if scale == 0.0:  # all-zero outputs agree with any other all-zero model: no evidence either way
        return VerificationReport(
            max_abs,
            math.inf,
            0.0,
            tolerance,
            False,
            len(ref_out),
            shapes,
            name,
            "the reference outputs are all zero (output scale 0): nothing was compared",
        )
    passed = max_abs <= tolerance * max(1.0, scale)
    rel = max_abs / scale if scale > 0 else max_abs
    return VerificationReport(max_abs, rel, scale, tolerance, bool(passed), len(ref_out), shapes, name)
