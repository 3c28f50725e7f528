"""``optimize(model, example_inputs)``: keep the stem's fastest exact form for this device and input shape.

Which form of ``stem_forms`` wins depends on the device, batch and image size: every form is checked in float64,
all are timed side by side (with the stem as it is) on the stem's real input, and the whole model is verified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .stem_forms import KIND_OF_ORDER, build_form, form_names, strided_block
from ..stems import Change, VerificationError, check, plan
from ..stems.check import apply
from ..stems.build import carry_routing
from .timing import median, time_interleaved
from ..verify import (
    DEFAULT_TOLERANCE,
    VerificationReport,
    VerifiedReport,
    flatten_outputs,
    infer_input_shape,
    verify as verify_models,
)

ORIGINAL = "original"  # the stem as the model has it, always a candidate: optimize never makes a model slower


@dataclass
class FormResult:
    """One candidate form of a stem: its median time, ratio to the fastest, and float64 error vs the original."""

    form: str
    median_ms: float
    ratio_to_fastest: float
    max_abs_err: float
    exact: bool


@dataclass
class StemChoice:
    """The forms tried for one stem and the one kept."""

    path: str
    original_type: str
    input_shape: list[int]
    chosen: str
    speedup_vs_original: float
    results: list[FormResult] = field(default_factory=list)


@dataclass
class OptimizeReport(VerifiedReport):
    """What ``optimize`` measured and chose."""

    device: str
    mode: str  # "forward" | "forward+backward"
    measure: str  # "stem" | "model"
    stems: list[StemChoice] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    verification: VerificationReport | None = None

    def __str__(self) -> str:
        lines = [f"optimize on {self.device} ({self.mode}, timing the {self.measure}):"]
        for stem in self.stems:
            lines.append(
                f"  {stem.path or '<root>'} ({stem.original_type}, input {'x'.join(map(str, stem.input_shape))}): "
                f"kept {stem.chosen}, {stem.speedup_vs_original:.2f}x the original's speed"
            )
            for r in sorted(stem.results, key=lambda r: r.median_ms):
                mark = "" if r.exact else "  NOT EXACT, excluded"
                lines.append(
                    f"    {r.form:<32} {r.median_ms:9.3f} ms  x{r.ratio_to_fastest:5.2f}  err {r.max_abs_err:.1e}{mark}"
                )
        lines += [f"  skipped: {reason}" for reason in self.skipped]
        if self.verification is not None:
            lines.append(f"  verify: {self.verification}")
        return "\n".join(lines)


@dataclass
class _Stem:
    path: str  # where the new form goes
    helper_paths: list[str]  # other modules the form absorbs (a separate space-to-depth layer), set to Identity
    original: nn.Module  # the stem as a module taking the stem's input
    block: nn.Module  # its strided conv block


def locate_stem(model: nn.Module) -> tuple[_Stem | None, list[str]]:
    """The stem of ``model`` (the first conv the input meets, with any space-to-depth before it), None when there is
    none with an exact strided form, and the reasons for what was skipped."""
    for to in ("conv", "s2d"):  # a space-to-depth stem first, else a strided conv one
        changes, skipped = plan(model, to=to, scope="stem")
        records = [c for c in changes if c.record is not None]
        if records:
            helpers = [c.path for c in changes if c.record is None] if to == "conv" else []
            parts = [model.get_submodule(p) for p in [*helpers, records[0].path]]
            original = parts[0] if len(parts) == 1 else nn.Sequential(*parts)
            return _Stem(records[0].path, helpers, original, strided_block(original)), []
        if skipped or to == "s2d":
            reasons = [f"{s.path}: {s.reason}" for s in skipped]
            return None, reasons or ["no Focus, space-to-depth or strided-conv stem found"]


class _Captured(Exception):
    pass


def capture_stem_input(model: nn.Module, first: nn.Module, example_inputs) -> torch.Tensor:
    """The tensor that reaches ``first`` when ``model`` runs on ``example_inputs`` (the forward stops there)."""
    box: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        box["x"] = args[0].detach()
        raise _Captured  # nothing after the stem runs, so no BatchNorm statistics change

    handle = first.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(*example_inputs)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "x" not in box:
        raise ValueError("the model never ran its stem on example_inputs; pass the inputs its forward expects")
    return box["x"]


def _changes(model: nn.Module, stem: _Stem, module: nn.Module) -> list[Change]:
    """Put ``module`` where the stem is (helpers become Identity); ``module`` may be the original pieces again."""
    if module is stem.original and stem.helper_paths:
        return [Change(path, part) for path, part in zip(stem.helper_paths + [stem.path], stem.original)]
    helpers = [Change(p, carry_routing(model.get_submodule(p), nn.Identity())) for p in stem.helper_paths]
    return helpers + [Change(stem.path, module)]


def _step(module: nn.Module, inputs: tuple, backward: bool) -> Callable[[], object]:
    """One timed call: forward without autograd, or forward + backward (parameter gradients only)."""
    params = [p for p in module.parameters() if p.requires_grad]

    def forward():
        with torch.no_grad():
            return module(*inputs)

    def forward_backward():
        for p in params:
            p.grad = None
        outputs = module(*inputs)
        loss = sum(t.float().sum() for t in flatten_outputs(outputs) if t.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()

    return forward_backward if backward else forward


def optimize(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple | list,
    forms: list[str] | None = None,
    backward: bool = False,
    measure: str = "stem",
    repeats: int = 15,
    warmup: int = 3,
    verify: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[nn.Module, OptimizeReport]:
    """Replace the stem of ``model`` by its fastest exact form for ``example_inputs`` on the model's device, in place.

    Args:
        model (nn.Module): Any model with a Focus, space-to-depth + conv, or strided-conv stem.
        example_inputs (torch.Tensor | tuple): Inputs of the real shape (batch, image size) on the real device.
        forms (list[str] | None): Forms to try (all of ``form_names()`` by default); the stem as it is is always
            tried too, so the result is never slower than the original beyond measurement noise.
        backward (bool): Time forward + backward (training) instead of forward without autograd (inference).
        measure (str): ``"stem"`` times the stem alone; ``"model"`` the whole model with each form (which also
            captures effects downstream, such as a channels_last output).
        repeats, warmup (int): Interleaved rounds timed per candidate (medians compared), rounds discarded first.
        verify (bool): Verify the whole model in float64 on the first sample; raise and change nothing on failure.
        tolerance (float): Verification tolerance relative to the output scale.

    Returns:
        (tuple[nn.Module, OptimizeReport]): ``model`` itself (changed in place) and what was measured and chosen.

    Raises:
        VerificationError: The float64 verification of the chosen model failed (the model is left unchanged).
        ValueError: Bad ``measure`` or form names, or inputs that never reach the stem.
    """
    if measure not in ("stem", "model"):
        raise ValueError(f"measure must be 'stem' or 'model', not {measure!r}")
    forms = list(forms) if forms is not None else form_names()
    unknown = [f for f in forms if f not in form_names()]
    if unknown:
        raise ValueError(f"unknown stem form {unknown[0]!r}: use some of {', '.join(form_names())}")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    device = next((p.device for p in model.parameters()), inputs[0].device)
    report = OptimizeReport(str(device), "forward+backward" if backward else "forward", measure)
    stem, skipped = locate_stem(model)
    report.skipped = skipped
    if stem is None:
        return model, report

    first = model.get_submodule(stem.helper_paths[0]) if stem.helper_paths else model.get_submodule(stem.path)
    x = capture_stem_input(model, first, inputs)
    candidates: dict[str, nn.Module] = {ORIGINAL: stem.original}
    candidates.update({name: build_form(stem.block, name) for name in forms})
    probe = x[: min(2, x.shape[0])]
    errors = {
        name: verify_models(stem.original, module, inputs=probe, tolerance=tolerance)
        for name, module in candidates.items()
    }
    exact = [name for name in candidates if errors[name].passed]
    times = _time_candidates(
        model, stem, {n: candidates[n] for n in exact}, x, inputs, backward, measure, repeats, warmup, device
    )
    medians = {name: median(t) for name, t in times.items()}
    chosen = min(medians, key=medians.get)
    fastest = medians[chosen]
    ms = {n: medians.get(n, float("nan")) for n in candidates}  # NaN: not exact, not timed
    results = [FormResult(n, ms[n] * 1e3, ms[n] / fastest, errors[n].max_abs_err, errors[n].passed) for n in candidates]
    report.stems.append(
        StemChoice(stem.path, type(stem.original).__name__, list(x.shape), chosen, medians[ORIGINAL] / fastest, results)
    )
    if chosen != ORIGINAL:
        first_sample = tuple(t[:1] if isinstance(t, torch.Tensor) and t.ndim else t for t in inputs)  # float64 is slow
        report.verification = _apply(model, stem, chosen, first_sample, verify, tolerance)
    return model, report


def _apply(
    model: nn.Module, stem: _Stem, form: str, inputs, verify: bool, tolerance: float
) -> VerificationReport | None:
    """Put ``form`` in place, after checking the whole model in float64 on ``inputs`` (None: random ones of an
    inferred shape) when ``verify``; raise ``VerificationError`` and change nothing on failure."""
    changes = _changes(model, stem, carry_routing(model.get_submodule(stem.path), build_form(stem.block, form)))
    verification = check(model, changes, inputs, tolerance=tolerance) if verify else None
    if verification is not None and not verification.passed:
        raise VerificationError(f"verification failed, model left unchanged: {verification}", verification)
    apply(model, changes)
    return verification


def _time_candidates(model, stem, candidates, x, inputs, backward, measure, repeats, warmup, device):
    """Interleaved times of each candidate: the stem alone on its input, or the whole model with it installed."""
    if measure == "stem":
        copies = {name: copy.deepcopy(module) for name, module in candidates.items()}  # timing may touch BN stats
        calls = {name: _step(module, (x,), backward) for name, module in copies.items()}
        return time_interleaved(calls, device, repeats, warmup)
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}  # training-mode BN stats, restored below
    grads = {k: p.grad for k, p in model.named_parameters()}  # the caller's gradients, restored below
    at_path = model.get_submodule(stem.path)  # Ultralytics routes by attributes (i, f) of each row: keep them
    installed = {
        name: (module if name == ORIGINAL else carry_routing(at_path, copy.deepcopy(module)))
        for name, module in candidates.items()
    }
    whole = _step(model, inputs, backward)

    def with_form(name: str) -> Callable[[], object]:
        def call():
            apply(model, _changes(model, stem, installed[name]))
            return whole()

        return call

    try:
        return time_interleaved({name: with_form(name) for name in installed}, device, repeats, warmup)
    finally:
        apply(model, _changes(model, stem, stem.original))
        with torch.no_grad():
            for key, value in model.named_buffers():
                value.copy_(buffers[key])
        for key, parameter in model.named_parameters():
            parameter.grad = grads.get(key)


def fastest_model_checkpoint(content: dict, batch: int, size: int, verify: bool = True, repeats: int = 10):
    """``convert --to fastest`` for a model checkpoint: time on a float32 copy, apply the pick to every model in it
    (each keeps its own dtype). Returns the content (models changed in place) and the timing report."""
    models = [content[key] for key in ("model", "ema") if isinstance(content.get(key), nn.Module)]
    probe = copy.deepcopy(models[0]).float().eval()
    channels = infer_input_shape(probe)[1]
    x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))
    _, report = optimize(probe, x, repeats=repeats, verify=False)
    if not report.stems:
        raise ValueError(f"no stem to optimize ({'; '.join(report.skipped)})")
    chosen = report.stems[0].chosen
    if chosen != ORIGINAL:
        for model in models:  # the choice carried over, no timing: same stem, the checkpoint's own dtype
            stem, skipped = locate_stem(model)
            if stem is None:
                raise ValueError(f"no stem to rewrite ({'; '.join(skipped)})")
            report.verification = _apply(model, stem, chosen, None, verify, DEFAULT_TOLERANCE)
    return content, report


def fastest_state_dict_form(
    state_dict: dict[str, torch.Tensor],
    batch: int,
    size: int,
    block_size: int = 2,
    order: str = "yolov5",
    repeats: int = 10,
) -> tuple[str, dict[str, float]]:
    """Which of the two layouts a state dict can hold, ``"focus"`` or ``"conv"``, runs its stem faster here, and the
    median milliseconds of both."""
    from ..remap import focus_to_conv_weight
    from ..state_dict import find_stem

    stem = find_stem(state_dict, block_size=block_size)
    if stem is None:
        raise ValueError("no Focus or conv stem found in the state dict (see `focus-surgery inspect`)")
    weight = state_dict[stem.weight_key].detach().float()
    if stem.form == "focus":
        weight = focus_to_conv_weight(weight, block_size, order)
    k = weight.shape[2] // block_size
    conv = nn.Conv2d(
        weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), block_size, block_size * (k // 2), bias=False
    )
    conv.weight = nn.Parameter(weight, requires_grad=False)
    forms = {"focus": build_form(conv, KIND_OF_ORDER[order]), "conv": build_form(conv, "conv")}
    x = torch.rand(batch, weight.shape[1], size, size, generator=torch.Generator().manual_seed(0))
    times = time_interleaved({n: _step(m, (x,), False) for n, m in forms.items()}, torch.device("cpu"), repeats, 2)
    medians = {name: median(t) * 1e3 for name, t in times.items()}
    return min(medians, key=medians.get), medians
